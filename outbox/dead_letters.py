"""SQL of ``dead_letter_message``: what could not be processed or published, for replay."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

__all__ = ["DeadLetter", "DeadLetterStore"]

Conn = psycopg.AsyncConnection[Any]
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
