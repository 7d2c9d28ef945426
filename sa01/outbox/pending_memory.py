"""SQL of ``pending_memory``: memories kept while SomaBrain is unavailable."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg

from schemas.headers import MAX_ERROR_TEXT
from schemas.messages import MemoryRecord

__all__ = ["PendingMemoryStore"]

Conn = psycopg.AsyncConnection[Any]


class PendingMemoryStore:
    """Statements over ``pending_memory`` (one row per memory id)."""

    async def add(self, conn: Conn, record: MemoryRecord) -> bool:
        """Keep ``record`` once; True when inserted."""
        cur = await conn.execute(
            "INSERT INTO pending_memory (idempotency_key, tenant_id, agent_id, content, metadata)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING",
            (
                record.memory_id,
                record.tenant_id,
                record.agent_id,
                record.content,
                json.dumps({"record": record.model_dump(mode="json")}),
            ),
        )
        return cur.rowcount == 1

    async def has_unsynced(self, conn: Conn, tenant: str, agent: str) -> bool:
        """True while memories of this tenant and agent wait (newer ones must queue behind)."""
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pending_memory"
            " WHERE NOT synced AND tenant_id = %s AND agent_id = %s)",
            (tenant, agent),
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    async def groups(self, conn: Conn) -> list[tuple[str, str]]:
        """(tenant, agent) pairs with unsynced memories."""
        cur = await conn.execute(
            "SELECT tenant_id, agent_id FROM pending_memory WHERE NOT synced"
            " GROUP BY tenant_id, agent_id ORDER BY min(id)"
        )
        return [(str(t), str(a)) for t, a in await cur.fetchall()]

    async def next_batch(
        self, conn: Conn, tenant: str, agent: str, limit: int
    ) -> list[tuple[int, object, bool]]:
        """The oldest unsynced memories of a group: (id, the record as stored, due now).

        The record is returned as stored, not validated: the caller dead-letters one that
        no longer validates instead of failing the whole group."""
        cur = await conn.execute(
            "SELECT id, metadata, next_attempt_at <= now() FROM pending_memory"
            " WHERE NOT synced AND tenant_id = %s AND agent_id = %s ORDER BY id LIMIT %s",
            (tenant, agent, limit),
        )
        return [(int(r[0]), r[1].get("record"), bool(r[2])) for r in await cur.fetchall()]

    async def mark_synced(self, conn: Conn, row_id: int) -> None:
        """The memory is in SomaBrain."""
        await conn.execute(
            "UPDATE pending_memory SET synced = true, synced_at = now(), last_error = NULL"
            " WHERE id = %s",
            (row_id,),
        )

    async def fail(self, conn: Conn, row_id: int, error: str, backoff: timedelta) -> int:
        """Count a failed replay and back off; the attempts so far."""
        cur = await conn.execute(
            "UPDATE pending_memory SET attempts = attempts + 1, last_error = %s,"
            " next_attempt_at = now() + %s WHERE id = %s RETURNING attempts",
            (error[:MAX_ERROR_TEXT], backoff, row_id),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def gave_up(self, conn: Conn, row_id: int, error: str) -> None:
        """Close a memory that cannot be stored (it was dead-lettered): it leaves the
        group's queue, so the memories behind it are replayed."""
        await conn.execute(
            "UPDATE pending_memory SET synced = true, synced_at = now(),"
            " last_error = %s WHERE id = %s",
            (f"dead-lettered: {error}"[:MAX_ERROR_TEXT], row_id),
        )

    async def unsynced_count(self, conn: Conn) -> int:
        """Memories still waiting."""
        cur = await conn.execute("SELECT count(*) FROM pending_memory WHERE NOT synced")
        row = await cur.fetchone()
        return int(row[0]) if row else 0
