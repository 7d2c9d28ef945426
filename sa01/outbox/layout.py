"""The outbox's shard count, recorded once for the whole deployment.

Every relay must split the outbox the same way: a relay counting 2 shards and one
counting 4 would each take a shard lock of their own count and publish the same key
concurrently, out of order. So the count is recorded in ``outbox_layout`` (one row):

* the first relay to take a shard records its ``SA01_OUTBOX_SHARDS`` there;
* a relay about to publish a shard reads it, under the shard's lock, and refuses with
  :class:`ShardCountMismatchError` when its own count differs (it keeps refusing, and
  publishes nothing, until the counts agree);
* ``OutboxRelay.change_shard_count`` (``faust -A streams outbox-shards --set N``) changes it: it
  drains the outbox with the recorded count (which settles any batch a killed relay left
  in flight), then, holding every shard lock of that count (so no relay of it runs),
  checks that no row is in flight and records the new count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from sa01.core.errors import ConfigurationError
from sa01.core.settings import Settings

__all__ = [
    "ShardCountMismatchError",
    "ShardLayout",
    "check_shard_count",
    "read_layout",
    "record_shard_count",
]

Conn = psycopg.AsyncConnection[Any]


class ShardCountMismatchError(ConfigurationError):
    """This relay's ``SA01_OUTBOX_SHARDS`` is not the count the outbox is published with."""


@dataclass(frozen=True)
class ShardLayout:
    """What ``outbox-shards`` shows: the recorded count and the rows in flight."""

    recorded: int | None
    configured: int
    in_flight: int


async def read_layout(conn: Conn, settings: Settings) -> ShardLayout:
    """The recorded count (None before any relay ran) and the rows being published."""
    cur = await conn.execute("SELECT shards FROM outbox_layout")
    row = await cur.fetchone()
    cur = await conn.execute("SELECT count(*) FROM outbox_message WHERE status = 'publishing'")
    flight = await cur.fetchone()
    return ShardLayout(
        int(row[0]) if row else None, settings.outbox_shards, int(flight[0]) if flight else 0
    )


async def check_shard_count(conn: Conn, shards: int) -> None:
    """Record ``shards`` if no count is recorded yet; raise if another count is."""
    await conn.execute(
        "INSERT INTO outbox_layout (shards) VALUES (%s) ON CONFLICT (singleton) DO NOTHING",
        (shards,),
    )
    cur = await conn.execute("SELECT shards FROM outbox_layout")
    row = await cur.fetchone()
    recorded = int(row[0]) if row else shards
    if recorded != shards:
        raise ShardCountMismatchError(
            f"SA01_OUTBOX_SHARDS is {shards} here, but the outbox is published with "
            f"{recorded} shards: this relay publishes nothing. Set SA01_OUTBOX_SHARDS="
            f"{recorded}, or change the count with `faust -A streams outbox-shards --set "
            f"{shards}` (docs/operations.md, 'Changing SA01_OUTBOX_SHARDS')."
        )


async def record_shard_count(conn: Conn, shards: int) -> None:
    """Record ``shards`` (the caller holds every shard lock of the recorded count)."""
    await conn.execute(
        "INSERT INTO outbox_layout (shards) VALUES (%s) ON CONFLICT (singleton)"
        " DO UPDATE SET shards = excluded.shards, recorded_at = now()",
        (shards,),
    )
