"""SQL of ``idempotency_record``: processed keys (and their results) that expire.

The batch statements (:meth:`IdempotencyStore.found`, :meth:`IdempotencyStore.put_many`)
are one round trip each, whatever the number of keys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

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

    async def found(self, conn: Conn, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that have an unexpired record (one statement)."""
        cur = await conn.execute(
            "SELECT key FROM idempotency_record WHERE key = ANY(%s::text[]) AND expires_at > now()",
            (list(keys),),
        )
        return {str(row[0]) for row in await cur.fetchall()}

    async def put_many(
        self, conn: Conn, entries: Sequence[tuple[str, Any]], ttl: timedelta
    ) -> set[str]:
        """Record each (key, result) as processed in one statement; return the keys
        recorded now (a key already recorded and unexpired is left as it was).

        The keys must be distinct. An expired record of a key is replaced.
        """
        if not entries:
            return set()
        cur = await conn.execute(
            "INSERT INTO idempotency_record (key, result, expires_at)"
            " SELECT k, r, now() + %s FROM unnest(%s::text[], %s::jsonb[]) AS e(k, r)"
            " ON CONFLICT (key) DO UPDATE SET result = EXCLUDED.result,"
            "   expires_at = EXCLUDED.expires_at, created_at = now()"
            " WHERE idempotency_record.expires_at <= now()"
            " RETURNING key",
            (ttl, [key for key, _ in entries], [Jsonb(result) for _, result in entries]),
        )
        return {str(row[0]) for row in await cur.fetchall()}

    async def purge_expired(self, conn: Conn, limit: int = 10_000) -> int:
        """Delete up to ``limit`` expired records; return how many."""
        cur = await conn.execute(
            "DELETE FROM idempotency_record WHERE key IN ("
            " SELECT key FROM idempotency_record WHERE expires_at <= now() LIMIT %s)",
            (limit,),
        )
        return cur.rowcount
