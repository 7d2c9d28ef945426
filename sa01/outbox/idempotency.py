"""SQL of ``idempotency_record``: processed keys (and their results) that expire.

The batch statements (:meth:`IdempotencyStore.found`, :meth:`IdempotencyStore.put_many`,
:meth:`IdempotencyStore.put_many_with_rows`) are one round trip each, whatever the number
of keys. :meth:`IdempotencyStore.put_many_with_rows` is one statement: on an autocommit
connection it is its own transaction (no ``BEGIN``/``COMMIT`` round trips), and each
key's outbox rows are written if and only if its record is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sa01.outbox.store import OutboxRecord

__all__ = ["EncodedJson", "IdempotencyStore"]

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class EncodedJson:
    """A result already encoded as JSON text (stored as is, not encoded again)."""

    text: str


def _json_text(result: Any) -> str:
    return result.text if isinstance(result, EncodedJson) else json.dumps(result)


#: Array parameters are sent in binary (``%b``): psycopg's text format escapes each
#: element in Python, about 20 times slower for a batch's payloads (bytea) and headers.
_PUT_WITH_ROWS = (
    "WITH recorded AS ("
    " INSERT INTO idempotency_record (key, result, expires_at)"
    " SELECT k, r::jsonb, now() + %(ttl)s FROM unnest(%(keys)b::text[], %(results)b::text[])"
    "   AS e(k, r)"
    " ON CONFLICT (key) DO UPDATE SET result = EXCLUDED.result,"
    "   expires_at = EXCLUDED.expires_at, created_at = now()"
    " WHERE idempotency_record.expires_at <= now()"
    " RETURNING key"
    "), rows AS ("
    " INSERT INTO outbox_message"
    "  (idempotency_key, topic, partition_key, payload, headers, max_attempts)"
    " SELECT o.k, o.t, o.pk, o.p, o.h::jsonb, %(max_attempts)s FROM unnest("
    "   %(owners)b::text[], %(row_keys)b::text[], %(topics)b::text[], %(partition_keys)b::bytea[],"
    "   %(payloads)b::bytea[], %(headers)b::text[]"
    " ) WITH ORDINALITY AS o(owner, k, t, pk, p, h, n)"
    " WHERE o.owner IN (SELECT key FROM recorded)"
    " ORDER BY o.n"
    " ON CONFLICT (idempotency_key) DO NOTHING"
    ")"
    " SELECT key FROM recorded"
)


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
            "SELECT key FROM idempotency_record WHERE key = ANY(%b::text[]) AND expires_at > now()",
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

    async def put_many_with_rows(
        self,
        conn: Conn,
        entries: Sequence[tuple[str, Any, Sequence[OutboxRecord]]],
        ttl: timedelta,
        max_attempts: int,
    ) -> set[str]:
        """Record each (key, result) as :meth:`put_many` does and, in the same statement,
        insert the outbox rows of the keys recorded now (ids in the order given; a row
        whose idempotency key exists is skipped); return the keys recorded now.

        The keys must be distinct. A result may be :class:`EncodedJson`.
        """
        if not entries:
            return set()
        rows = [(key, record) for key, _result, records in entries for record in records]
        cur = await conn.execute(
            _PUT_WITH_ROWS,
            {
                "ttl": ttl,
                "keys": [key for key, _result, _records in entries],
                "results": [_json_text(result) for _key, result, _records in entries],
                "max_attempts": max_attempts,
                "owners": [key for key, _record in rows],
                "row_keys": [r.idempotency_key for _key, r in rows],
                "topics": [r.topic for _key, r in rows],
                "partition_keys": [r.key for _key, r in rows],
                "payloads": [r.value for _key, r in rows],
                "headers": [json.dumps(r.headers) for _key, r in rows],
            },
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
