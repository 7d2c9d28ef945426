# The worker/relay image used by docker-compose.yml. It runs as an unprivileged user.
FROM python:3.11.11-slim-bookworm
WORKDIR /app
RUN useradd --system --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin sa01
COPY pyproject.toml README.md requirements-bootstrap.lock requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-bootstrap.lock \
    && pip install --no-cache-dir --require-hashes -r requirements.lock
COPY sa01 sa01
COPY schemas schemas
COPY streams streams
COPY agents agents
COPY tables tables
RUN pip install --no-cache-dir --no-deps . && mkdir -p /app/.run && chown sa01:sa01 /app/.run
ENV LITELLM_LOCAL_MODEL_COST_MAP=True
USER 10001:10001
CMD ["faust", "-A", "streams", "worker", "-l", "info"]
