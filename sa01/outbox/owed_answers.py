"""SQL of ``deferred_answer``: real answers still owed after a degraded reply.

A row is keyed by its tenant and message id (:func:`deferred_key`). ``answered_at``
closes a row: the real answer was committed, or the answerer gave up on it, in which
case ``last_error`` starts with ``gave up:`` and the message is in the inbound topic's
dead letters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from schemas.headers import MAX_ERROR_TEXT
from schemas.messages import ConversationInbound, scoped_key

__all__ = ["DeferredAnswerStore", "OwedAnswer", "deferred_key"]

Conn = psycopg.AsyncConnection[Any]


def deferred_key(inbound: ConversationInbound) -> str:
    """The row key of the answer owed to ``inbound``: ``<tenant>:<message id>``."""
    return scoped_key(inbound.tenant_id, inbound.message_id)


@dataclass(frozen=True)
class OwedAnswer:
    """One open row: the stored message as written (validated by the caller)."""

    key: str
    document: object
    attempts: int


class DeferredAnswerStore:
    """Statements over ``deferred_answer``."""

    async def add(self, conn: Conn, inbound: ConversationInbound) -> bool:
        """Owe a real answer to ``inbound`` (once per tenant and message id)."""
        cur = await conn.execute(
            "INSERT INTO deferred_answer (message_id, inbound) VALUES (%s, %s)"
            " ON CONFLICT (message_id) DO NOTHING",
            (deferred_key(inbound), json.dumps(inbound.model_dump(mode="json"))),
        )
        return cur.rowcount == 1

    async def due(self, conn: Conn, limit: int) -> list[OwedAnswer]:
        """Open rows whose next attempt is due, oldest first."""
        cur = await conn.execute(
            "SELECT message_id, inbound, attempts FROM deferred_answer"
            " WHERE answered_at IS NULL AND next_attempt_at <= now()"
            " ORDER BY created_at LIMIT %s",
            (limit,),
        )
        return [OwedAnswer(str(r[0]), r[1], int(r[2])) for r in await cur.fetchall()]

    async def answered(self, conn: Conn, key: str) -> bool:
        """Mark the real answer given; False when the row was already closed."""
        cur = await conn.execute(
            "UPDATE deferred_answer SET answered_at = now()"
            " WHERE message_id = %s AND answered_at IS NULL",
            (key,),
        )
        return cur.rowcount == 1

    async def gave_up(self, conn: Conn, key: str, error: str) -> None:
        """Close the row without an answer (its message was dead-lettered)."""
        await conn.execute(
            "UPDATE deferred_answer SET answered_at = now(), attempts = attempts + 1,"
            " last_error = %s WHERE message_id = %s AND answered_at IS NULL",
            (f"gave up: {error}"[:MAX_ERROR_TEXT], key),
        )

    async def failed(self, conn: Conn, key: str, error: str, backoff: timedelta) -> None:
        """Count a failed attempt and back off."""
        await conn.execute(
            "UPDATE deferred_answer SET attempts = attempts + 1, last_error = %s,"
            " next_attempt_at = now() + %s WHERE message_id = %s",
            (error[:MAX_ERROR_TEXT], backoff, key),
        )

    async def waiting(self, conn: Conn) -> int:
        """Answers still owed."""
        cur = await conn.execute("SELECT count(*) FROM deferred_answer WHERE answered_at IS NULL")
        row = await cur.fetchone()
        return int(row[0]) if row else 0
