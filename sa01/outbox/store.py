"""SQL of the ``outbox_message`` table: add, claim, settle, fail.

``add_many`` inserts the rows of many messages in one statement (group commit).

Every statement takes parameters only. A relay claims a batch by reading it (no write:
its shard's advisory lock makes it the shard's only publisher), names the batch's row
ids in the ledger record of the same Kafka transaction, and settles the batch after the
commit with one statement: the rows are deleted, or, with
``SA01_OUTBOX_RETENTION_SECONDS`` > 0, marked ``published`` and kept that long. A batch
that does not commit was never written to, so its rows are simply still ``pending``.
Rows that an earlier version of the relay left ``publishing`` (claimed under a batch
sequence) are settled by :meth:`OutboxStore.reconcile` the old way.

Shards are computed when rows are read, never stored: a key's hash is the first 4 bytes
of its SHA-256 (SQL ``outbox_key_hash``, Python :func:`key_hash`), and shard ``s`` of
``N`` owns the hashes ``h`` with ``h * N // 2**32 == s``, so every row of a key is
published by the same shard, in id order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from sa01.outbox.ledger import IdRange, LedgerEntry
from schemas.headers import MAX_ERROR_TEXT

__all__ = [
    "HASH_SPACE",
    "ClaimedRow",
    "OutboxRecord",
    "OutboxStore",
    "key_hash",
    "shard_of",
    "shard_range",
]

Conn = psycopg.AsyncConnection[Any]  # psycopg hands rows over as tuples of untyped values


@dataclass(frozen=True)
class OutboxRecord:
    """A Kafka record to publish exactly once (the idempotency key is unique)."""

    topic: str
    value: bytes
    idempotency_key: str
    key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ClaimedRow(NamedTuple):
    """An outbox row a relay claimed for one Kafka transaction (a tuple: the relay reads
    thousands a batch, and a tuple is built from the database row at once)."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    idempotency_key: str
    attempts: int
    max_attempts: int


_SHARD = sql.SQL(" AND outbox_key_hash({col}) >= %(low)s AND outbox_key_hash({col}) < %(high)s")


_PUBLISHABLE = sql.SQL(
    """
    SELECT m.id, m.topic, m.partition_key, m.payload, m.headers, m.idempotency_key,
           m.attempts, m.max_attempts
    FROM outbox_message m
    WHERE m.status = 'pending' AND m.next_attempt_at <= now() AND {ids}{shard}
      AND NOT EXISTS (
          SELECT 1 FROM blocked b
          WHERE b.topic = m.topic AND b.partition_key IS NOT DISTINCT FROM m.partition_key)
    ORDER BY m.id
    LIMIT %(limit)s
"""
)

#: The ids a claim reads, around the rows it skips (``lo`` to ``hi``): each part is one
#: ordered walk of the pending index, and the parts are merged in id order. The span
#: itself is read only when the rows skipped are not one range (a hole in it may hold a
#: row committed late, or, sharded, a row of this shard between the skipped ones).
_BELOW = sql.SQL("m.id < %(lo)s")
_ABOVE = sql.SQL("m.id > %(hi)s")
_HOLES = sql.SQL("m.id BETWEEN %(lo)s AND %(hi)s AND NOT (%(skip)s::int8multirange @> m.id)")


def _claim_query(sharded: bool, holes: bool) -> sql.Composed:
    shard = _SHARD.format(col=sql.SQL("m.partition_key")) if sharded else sql.SQL("")
    parts = [_BELOW, _ABOVE, _HOLES] if holes else [_BELOW, _ABOVE]
    publishable = sql.SQL(" UNION ALL ").join(
        sql.SQL("({})").format(_PUBLISHABLE.format(ids=ids, shard=shard)) for ids in parts
    )
    return sql.SQL(
        """
WITH blocked AS (
    -- Keys in backoff, of every shard: a key lies in one shard, so another shard's
    -- never matches; and filtering by hash here would walk the shard's whole range.
    SELECT DISTINCT topic, partition_key FROM outbox_message
    WHERE status = 'pending' AND next_attempt_at > now()
)
SELECT id, topic, partition_key, payload, headers::text, idempotency_key, attempts,
       max_attempts
FROM (
    SELECT p.*,
           sum(octet_length(p.payload)) OVER (ORDER BY p.id) - octet_length(p.payload)
               AS bytes_before
    FROM ({publishable}) p
    ORDER BY p.id
    LIMIT %(limit)s
) batch
WHERE bytes_before < %(max_bytes)s
ORDER BY id
"""
    ).format(publishable=publishable)


#: The claim reads the pending rows in id order, a few thousand at a time: walking the
#: ``outbox_message_pending`` index costs the rows read. A backlog written faster than
#: autovacuum analyses the table leaves statistics that call it empty, and the planner
#: then sorts every pending row on each claim (a bitmap scan, then an external merge
#: sort on disk: 30 ms for 40,000 rows, growing with the backlog). Sorts and bitmap scans
#: are off for the claim's own transaction.
_WALK_THE_PENDING_INDEX = (
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)"
)

_CLAIMS = {
    (sharded, holes): _claim_query(sharded, holes)
    for sharded in (False, True)
    for holes in (False, True)
}

HASH_SPACE = 2**32
"""Keys hash to [0, 2^32): the first 4 bytes of their SHA-256 (``outbox_key_hash``)."""


def _multirange(ranges: Sequence[IdRange]) -> str:
    """``ranges`` as an ``int8multirange`` literal (inclusive bounds)."""
    return "{" + ",".join(f"[{first},{last}]" for first, last in ranges) + "}"


def key_hash(key: bytes | None) -> int:
    """The hash of a row's key, as migration 0003's ``outbox_key_hash`` computes it."""
    return int.from_bytes(hashlib.sha256(key or b"").digest()[:4], "big")


def shard_of(key: bytes | None, shards: int) -> int:
    """The shard (0 .. shards - 1) that publishes the rows of ``key``."""
    return key_hash(key) * shards // HASH_SPACE


def shard_range(shard: int, shards: int) -> tuple[int, int]:
    """The hashes [low, high) of shard ``shard`` of ``shards``: those with ``shard_of`` = shard."""
    return (-(-shard * HASH_SPACE // shards), -(-(shard + 1) * HASH_SPACE // shards))


class OutboxStore:
    """Statements over ``outbox_message``; each takes the connection to run on."""

    async def add(self, conn: Conn, record: OutboxRecord, max_attempts: int) -> bool:
        """Insert ``record`` unless its idempotency key exists; True when inserted."""
        cur = await conn.execute(
            "INSERT INTO outbox_message"
            " (idempotency_key, topic, partition_key, payload, headers, max_attempts)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (idempotency_key) DO NOTHING",
            (
                record.idempotency_key,
                record.topic,
                record.key,
                record.value,
                json.dumps(record.headers),
                max_attempts,
            ),
        )
        return cur.rowcount == 1

    async def add_many(self, conn: Conn, records: Sequence[OutboxRecord], max_attempts: int) -> int:
        """Insert ``records`` in one statement, ids in their order, skipping those whose
        idempotency key exists; return how many were inserted."""
        if not records:
            return 0
        cur = await conn.execute(
            "INSERT INTO outbox_message"
            " (idempotency_key, topic, partition_key, payload, headers, max_attempts)"
            " SELECT k, t, pk, p, h, %s FROM unnest("
            "   %s::text[], %s::text[], %s::bytea[], %s::bytea[], %s::jsonb[]"
            " ) WITH ORDINALITY AS r(k, t, pk, p, h, n) ORDER BY n"
            " ON CONFLICT (idempotency_key) DO NOTHING",
            (
                max_attempts,
                [r.idempotency_key for r in records],
                [r.topic for r in records],
                [r.key for r in records],
                [r.value for r in records],
                [Jsonb(r.headers) for r in records],
            ),
        )
        return cur.rowcount

    async def claim(
        self,
        conn: Conn,
        limit: int,
        shard: tuple[int, int] | None = None,
        skip: Sequence[IdRange] = (),
        max_bytes: int = 2**62,
    ) -> list[ClaimedRow]:
        """Read up to ``limit`` publishable rows in id order, skipping keys in backoff and
        the rows ``skip`` (batches in flight or not yet settled). Writes nothing.

        The rows stop before the payloads pass ``max_bytes`` (the first row is read
        whatever its size). With ``shard`` (``(index, count)``, count > 1) only rows of
        that shard's keys.
        """
        params: dict[str, object] = {
            "limit": limit,
            "skip": _multirange(skip),
            "lo": min((first for first, _ in skip), default=0),
            "hi": max((last for _, last in skip), default=0),
            "max_bytes": max_bytes,
        }
        sharded = shard is not None and shard[1] > 1
        if shard is not None and sharded:
            params["low"], params["high"] = shard_range(*shard)
        query = _CLAIMS[(sharded, len(skip) > 1)]
        # Binary: bytea arrives as it is stored, not hex-encoded. The headers come as
        # text: json.loads of a str skips the encoding detection it runs on bytes.
        async with conn.transaction(), conn.cursor(binary=True) as cur:
            await cur.execute(_WALK_THE_PENDING_INDEX)
            await cur.execute(query, params)
            loads = json.loads
            return [
                ClaimedRow(row_id, topic, key, value, loads(headers), idem, attempts, most)
                for row_id, topic, key, value, headers, idem, attempts, most in (
                    await cur.fetchall()
                )
            ]

    async def settle(
        self, conn: Conn, ids: Sequence[int], *, keep: bool, relay_id: str, seq: int
    ) -> int:
        """Rows ``ids`` were committed in Kafka (batch ``seq`` of ``relay_id``): delete them,
        or with ``keep`` mark them ``published``. Rows already settled are left alone
        (settling twice, after a restart, is harmless); return how many were settled."""
        if not ids:
            return 0
        # One text literal: psycopg dumps a list of thousands of ints element by element.
        id_array = "{" + ",".join(map(str, ids)) + "}"
        if keep:
            cur = await conn.execute(
                "UPDATE outbox_message SET status = 'published', published_at = now(),"
                " last_error = NULL, claimed_by = %s, claim_seq = %s"
                " WHERE id = ANY(%s::bigint[]) AND status = 'pending'",
                (relay_id, seq, id_array),
            )
        else:
            cur = await conn.execute(
                "DELETE FROM outbox_message WHERE id = ANY(%s::bigint[]) AND status = 'pending'",
                (id_array,),
            )
        return cur.rowcount

    async def reconcile(
        self, conn: Conn, relay_id: str, committed: LedgerEntry, *, keep: bool
    ) -> int:
        """After a restart: the rows ``committed`` names were published; settle them.

        Rows an earlier version of the relay left ``publishing`` under ``relay_id`` are
        settled the old way: published up to the committed sequence, pending after it.
        Rows claimed by other relays (other shards) are left alone. Returns the rows
        settled as published.
        """
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE outbox_message SET status = 'published', published_at = now()"
                " WHERE status = 'publishing' AND claimed_by = %s AND claim_seq <= %s",
                (relay_id, committed.seq),
            )
            published = cur.rowcount
            await conn.execute(
                "UPDATE outbox_message SET status = 'pending'"
                " WHERE status = 'publishing' AND claimed_by = %s",
                (relay_id,),
            )
            ids = [i for first, last in committed.ids for i in range(first, last + 1)]
            published += await self.settle(
                conn, ids, keep=keep, relay_id=relay_id, seq=committed.seq
            )
        return published

    async def fail(
        self, conn: Conn, row_id: int, error: str, backoff: timedelta
    ) -> tuple[int, int]:
        """Count a row-specific failure; return (attempts now, max_attempts)."""
        cur = await conn.execute(
            "UPDATE outbox_message SET status = 'pending', attempts = attempts + 1,"
            " last_error = %s, next_attempt_at = now() + %s"
            " WHERE id = %s RETURNING attempts, max_attempts",
            (error[:MAX_ERROR_TEXT], backoff, row_id),
        )
        row = await cur.fetchone()
        if row is None:
            return 0, 0
        return int(row[0]), int(row[1])

    async def mark_failed(self, conn: Conn, row_id: int, error: str) -> None:
        """Give up on a row (it has been dead-lettered)."""
        await conn.execute(
            "UPDATE outbox_message SET status = 'failed', last_error = %s WHERE id = %s",
            (error[:MAX_ERROR_TEXT], row_id),
        )

    async def delete_published(self, conn: Conn, older_than: timedelta, limit: int) -> int:
        """Delete up to ``limit`` rows published more than ``older_than`` ago."""
        cur = await conn.execute(
            "DELETE FROM outbox_message WHERE id IN ("
            " SELECT id FROM outbox_message WHERE status = 'published'"
            " AND published_at < now() - %s LIMIT %s)",
            (older_than, limit),
        )
        return cur.rowcount

    async def pending_count(self, conn: Conn) -> tuple[int, float]:
        """(rows not yet published, age in seconds of the oldest of them)."""
        cur = await conn.execute(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
            " FROM outbox_message WHERE status IN ('pending', 'publishing')"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), float(row[1])
