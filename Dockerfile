# The worker/relay image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY schemas schemas
COPY outbox outbox
COPY providers providers
COPY journeys journeys
COPY pipeline pipeline
COPY streams streams
COPY agents agents
COPY tables tables
COPY loopback loopback
RUN pip install --no-cache-dir .
ENV LITELLM_LOCAL_MODEL_COST_MAP=True
CMD ["faust", "-A", "streams", "worker", "-l", "info"]
