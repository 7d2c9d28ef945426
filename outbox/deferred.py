"""SQL of ``deferred_answer``: real answers still owed after a degraded reply."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg

from schemas.messages import ConversationInbound

__all__ = ["DeferredAnswerStore"]

Conn = psycopg.AsyncConnection[Any]


class DeferredAnswerStore:
    """Statements over ``deferred_answer``."""

    async def add(self, conn: Conn, inbound: ConversationInbound) -> bool:
        """Owe a real answer to ``inbound`` (once per message id)."""
        cur = await conn.execute(
            "INSERT INTO deferred_answer (message_id, inbound) VALUES (%s, %s)"
            " ON CONFLICT (message_id) DO NOTHING",
            (inbound.message_id, json.dumps(inbound.model_dump(mode="json"))),
        )
        return cur.rowcount == 1

    async def due(self, conn: Conn, limit: int) -> list[ConversationInbound]:
        """Owed answers whose next attempt is due, oldest first."""
        cur = await conn.execute(
            "SELECT inbound FROM deferred_answer WHERE answered_at IS NULL"
            " AND next_attempt_at <= now() ORDER BY created_at LIMIT %s",
            (limit,),
        )
        return [
            ConversationInbound.model_validate(row[0], strict=False) for row in await cur.fetchall()
        ]

    async def answered(self, conn: Conn, message_id: str) -> bool:
        """Mark the real answer given; False when it already was."""
        cur = await conn.execute(
            "UPDATE deferred_answer SET answered_at = now()"
            " WHERE message_id = %s AND answered_at IS NULL",
            (message_id,),
        )
        return cur.rowcount == 1

    async def failed(self, conn: Conn, message_id: str, error: str, backoff: timedelta) -> None:
        """Count a failed attempt and back off."""
        await conn.execute(
            "UPDATE deferred_answer SET attempts = attempts + 1, last_error = %s,"
            " next_attempt_at = now() + %s WHERE message_id = %s",
            (error[:1000], backoff, message_id),
        )

    async def waiting(self, conn: Conn) -> int:
        """Answers still owed."""
        cur = await conn.execute("SELECT count(*) FROM deferred_answer WHERE answered_at IS NULL")
        row = await cur.fetchone()
        return int(row[0]) if row else 0
