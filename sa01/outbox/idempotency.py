"""SQL of ``idempotency_record``: processed keys (and their results) that expire."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg

__all__ = ["IdempotencyStore"]

Conn = psycopg.AsyncConnection[Any]


class IdempotencyStore:
    """Records that a key was processed, with its result, until it expires."""

    async def get(self, conn: Conn, key: str) -> tuple[bool, Any]:
        """(found, result) for an unexpired record of ``key``."""
        cur = await conn.execute(
            "SELECT result FROM idempotency_record WHERE key = %s AND expires_at > now()",
            (key,),
        )
        row = await cur.fetchone()
        if row is None:
            return False, None
        return True, row[0]

    async def put(self, conn: Conn, key: str, result: Any, ttl: timedelta) -> bool:
        """Record ``key`` as processed; False when it already was (nothing written).

        An expired record of the same key is replaced.
        """
        cur = await conn.execute(
            "INSERT INTO idempotency_record (key, result, expires_at)"
            " VALUES (%s, %s, now() + %s)"
            " ON CONFLICT (key) DO UPDATE SET result = EXCLUDED.result,"
            "   expires_at = EXCLUDED.expires_at, created_at = now()"
            " WHERE idempotency_record.expires_at <= now()",
            (key, json.dumps(result), ttl),
        )
        return cur.rowcount == 1

    async def purge_expired(self, conn: Conn, limit: int = 10_000) -> int:
        """Delete up to ``limit`` expired records; return how many."""
        cur = await conn.execute(
            "DELETE FROM idempotency_record WHERE key IN ("
            " SELECT key FROM idempotency_record WHERE expires_at <= now() LIMIT %s)",
            (limit,),
        )
        return cur.rowcount
