"""Shared helpers of the memory tests: a worker pointed at a SomaBrain, the pending table."""

from __future__ import annotations

import psycopg

from loopback import SomaBrainServer
from sa01.core.settings import Settings

__all__ = ["unsynced", "with_somabrain"]


def with_somabrain(settings: Settings, server: SomaBrainServer, **extra: object) -> Settings:
    """``settings`` with memory on ``server``, probed, and a one-second sync interval."""
    return settings.model_copy(
        update={
            "somabrain_url": server.base_url,
            "health_probes": "postgres,somabrain",
            "memory_sync_interval_seconds": 1.0,
            **extra,
        }
    )


async def unsynced(settings: Settings) -> tuple[int, int]:
    """(rows of ``pending_memory`` not yet synced, all rows) in the test's schema."""
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cur = await conn.execute(
            f"SELECT count(*) FILTER (WHERE NOT synced), count(*)"
            f" FROM {settings.database_schema}.pending_memory"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
