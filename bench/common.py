"""Shared helpers of the benchmarks: isolated settings, statistics, output."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

from sa01.core.settings import Settings
from sa01.core.topics import ensure_topics, project_topics
from sa01.outbox.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "results"


async def isolated_settings(**overrides: Any) -> Settings:
    """Settings with their own schema and topic prefix, migrated and created."""
    name = f"b{uuid.uuid4().hex[:10]}"
    settings = Settings.load(
        database_schema=name, topic_prefix=f"{name}.", app_id=name, **overrides
    )
    await migrate(settings)
    await ensure_topics(settings)
    return settings


async def drop(settings: Settings) -> None:
    """Remove the schema and topics of a bench run."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.delete_topics([s.name for s in project_topics(settings)]).values():
        try:
            future.result()
        except Exception:
            pass
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(settings.database_schema)
            )
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and spread of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def write_result(name: str, document: dict[str, Any]) -> Path:
    """Store a bench's figures as JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {"bench": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **document}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def table(rows: Sequence[Sequence[str]]) -> str:
    """A plain text table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
