"""``python -m streams.preflight``: what the worker will use, and what is missing."""

from __future__ import annotations

import sys

import psycopg

from sa01.core.kafka_security import describe_listener
from sa01.core.redaction import redact_url
from sa01.core.settings import Settings
from sa01.providers.configured import unconfigured_providers
from sa01.providers.responder import missing_key_notice

__all__ = ["main", "summary"]


def summary(settings: Settings) -> list[str]:
    """Readable lines describing the configuration (no secrets)."""
    database = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    lines = [
        f"kafka     {describe_listener(settings)}",
        f"postgres  {database.get('host')}:{database.get('port', 5432)}/"
        f"{database.get('dbname')} (schema {settings.database_schema})",
        f"redis     {redact_url(settings.redis_url)}",
        f"worker    http://{settings.web_host}:{settings.web_port} (/health /status /metrics)",
        "operator  "
        + (
            "token set: POST /circuits accepts 'Authorization: Bearer $SA01_OPERATOR_TOKEN'"
            if settings.operator_token and settings.operator_token.get_secret_value()
            else "no SA01_OPERATOR_TOKEN: state-changing endpoints are refused (reads work)"
        ),
    ]
    if settings.responder == "echo":
        lines.append("responder echo (no LLM)")
    else:
        endpoint = settings.llm_api_base or "the provider's own API"
        lines.append(f"responder {settings.llm_model} via {endpoint}")
    for service, why in sorted(unconfigured_providers(settings).items()):
        lines.append(f"off       {service}: not configured ({why})")
    return lines


def main() -> int:
    """Print the summary and any missing key; always succeeds (warnings only)."""
    settings = Settings.load()
    for line in summary(settings):
        print(f"[run] {line}")
    notice = missing_key_notice(settings)
    if notice:
        print(f"[run] warning: {notice}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
