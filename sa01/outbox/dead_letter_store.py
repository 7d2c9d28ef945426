"""SQL of ``dead_letter_message``: what could not be processed or published, for replay.

:meth:`DeadLetterStore.record` is the one way to dead-letter anything (inbound records,
outbox rows, memories): in the caller's transaction it writes the table row and the
outbox row that publishes the record to its topic's ``.dlq`` (never to ``.dlq.dlq``),
each at most once per idempotency key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from sa01.core.topics import dlq
from sa01.outbox.store import OutboxRecord, OutboxStore

__all__ = [
    "DeadLetter",
    "DeadLetterAdmin",
    "DeadLetterFilter",
    "DeadLetterStore",
    "StoredDeadLetter",
]

Conn = psycopg.AsyncConnection[Any]  # psycopg hands rows over as tuples of untyped values
Source = Literal["agent", "relay", "memory", "upload"]


@dataclass(frozen=True)
class DeadLetter:
    """A message given up on: its original bytes and key, where it came from, and why."""

    idempotency_key: str
    source: Source
    topic: str
    payload: bytes
    error_class: str
    error_message: str
    attempts: int
    key: bytes | None = None
    partition: int | None = None
    offset: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class DeadLetterStore:
    """Statements over ``dead_letter_message``."""

    async def add(self, conn: Conn, letter: DeadLetter) -> bool:
        """Record ``letter`` once (by idempotency key); True when inserted."""
        cur = await conn.execute(
            "INSERT INTO dead_letter_message (idempotency_key, source, topic, partition,"
            ' "offset", message_key, payload, headers, error_class, error_message, attempts)'
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (idempotency_key) DO NOTHING",
            (
                letter.idempotency_key,
                letter.source,
                letter.topic,
                letter.partition,
                letter.offset,
                letter.key,
                letter.payload,
                json.dumps(letter.headers),
                letter.error_class,
                letter.error_message,
                letter.attempts,
            ),
        )
        return cur.rowcount == 1

    async def record(
        self,
        conn: Conn,
        letter: DeadLetter,
        *,
        outbox_key: str,
        max_attempts: int,
    ) -> bool:
        """Dead-letter ``letter``: the table row and the ``<topic>.dlq`` outbox row (keyed
        ``outbox_key``), in one transaction; True when the outbox row is new.

        A record of a ``.dlq`` topic is only kept in the table.
        """
        async with conn.transaction():
            await self.add(conn, letter)
            if letter.topic.endswith(".dlq"):
                return False
            return await OutboxStore().add(
                conn,
                OutboxRecord(
                    topic=dlq(letter.topic),
                    key=letter.key,
                    value=letter.payload,
                    headers=letter.headers,
                    idempotency_key=outbox_key,
                ),
                max_attempts,
            )


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an admin command acts on.

    ``since_seconds`` keeps those *newer* than that many seconds, ``older_than_seconds``
    those *older* (retention: ``older_than_seconds=30 * 86400``); both together keep
    the span between.
    """

    ids: tuple[int, ...] = ()
    topic: str | None = None
    error: str | None = None
    since_seconds: float | None = None
    include_replayed: bool = False
    older_than_seconds: float | None = None

    @property
    def narrowed(self) -> bool:
        """Whether anything but ``include_replayed`` restricts the selection."""
        return bool(
            self.ids
            or self.topic
            or self.error
            or self.since_seconds is not None
            or self.older_than_seconds is not None
        )


@dataclass(frozen=True)
class StoredDeadLetter:
    """A row of ``dead_letter_message``."""

    id: int
    source: str
    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    payload: bytes
    headers: dict[str, str]
    error_class: str
    error_message: str
    attempts: int
    replayed_at: datetime | None
    created_at: datetime


def _where(selection: DeadLetterFilter) -> tuple[sql.Composable, list[object]]:
    clauses: list[sql.Composable] = []
    params: list[object] = []
    if selection.ids:
        clauses.append(sql.SQL("id = ANY(%s)"))
        params.append(list(selection.ids))
    if selection.topic:
        clauses.append(sql.SQL("topic = %s"))
        params.append(selection.topic)
    if selection.error:
        clauses.append(sql.SQL("error_class ILIKE %s"))
        params.append(f"%{selection.error}%")
    if selection.since_seconds is not None:
        clauses.append(sql.SQL("created_at >= now() - %s * interval '1 second'"))
        params.append(selection.since_seconds)
    if selection.older_than_seconds is not None:
        clauses.append(sql.SQL("created_at < now() - %s * interval '1 second'"))
        params.append(selection.older_than_seconds)
    if not selection.include_replayed:
        clauses.append(sql.SQL("replayed_at IS NULL"))
    if not clauses:
        return sql.SQL("TRUE"), params
    return sql.SQL(" AND ").join(clauses), params


class DeadLetterAdmin:
    """Queries and changes behind ``faust -A streams dlq``."""

    async def select(
        self, conn: Conn, selection: DeadLetterFilter, limit: int | None = None
    ) -> list[StoredDeadLetter]:
        """Dead letters matching ``selection``, oldest first."""
        where, params = _where(selection)
        query = sql.SQL(
            'SELECT id, source, topic, partition, "offset", message_key, payload, headers,'
            " error_class, error_message, attempts, replayed_at, created_at"
            " FROM dead_letter_message WHERE {} ORDER BY id"
        ).format(where)
        if limit is not None:
            query = query + sql.SQL(" LIMIT %s")
            params.append(limit)
        cur = await conn.execute(query, params)
        return [
            StoredDeadLetter(
                id=r[0],
                source=r[1],
                topic=r[2],
                partition=r[3],
                offset=r[4],
                key=bytes(r[5]) if r[5] is not None else None,
                payload=bytes(r[6]),
                headers=dict(r[7]),
                error_class=r[8],
                error_message=r[9],
                attempts=r[10],
                replayed_at=r[11],
                created_at=r[12],
            )
            for r in await cur.fetchall()
        ]

    async def count(self, conn: Conn, selection: DeadLetterFilter) -> int:
        """How many dead letters match."""
        where, params = _where(selection)
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM dead_letter_message WHERE {}").format(where), params
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def mark_replayed(self, conn: Conn, letter_id: int) -> None:
        """Record that a dead letter was sent back to its topic."""
        await conn.execute(
            "UPDATE dead_letter_message SET replayed_at = now() WHERE id = %s", (letter_id,)
        )

    async def purge(self, conn: Conn, selection: DeadLetterFilter) -> int:
        """Delete matching dead letters; return how many."""
        where, params = _where(selection)
        cur = await conn.execute(
            sql.SQL("DELETE FROM dead_letter_message WHERE {}").format(where), params
        )
        return cur.rowcount
