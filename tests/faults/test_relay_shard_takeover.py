"""A relay shard holder killed with kill -9 while another process takes its shards over."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict

import pytest

from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.store import OutboxRecord, OutboxStore, shard_of
from tests.support.kafka import consume
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.faults

SHARDS = 2


def record(settings: Settings, n: int, keys: int = 40) -> OutboxRecord:
    return OutboxRecord(
        topic=settings.topic("conversation.outbound"),
        key=f"key-{n % keys}".encode(),
        value=str(n).encode(),
        idempotency_key=f"message-{n}",
        headers={"idempotency-key": f"message-{n}"},
    )


async def published_by(
    database: Database, shard_ids: list[str], added: Counter[str]
) -> Counter[str]:
    """Rows published per shard: those added less those still in the outbox (published
    rows are deleted)."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT partition_key FROM outbox_message WHERE status IN ('pending', 'publishing')"
        )
        left = Counter(shard_ids[shard_of(bytes(key), SHARDS)] for (key,) in await cur.fetchall())
    return Counter({shard_id: added[shard_id] - left[shard_id] for shard_id in shard_ids})


@pytest.mark.timeout(600)
async def test_a_killed_shard_holder_is_taken_over_and_each_row_arrives_once_in_order(
    stack: Settings, workers: WorkerFactory
) -> None:
    total = 20_000
    settings = stack.model_copy(
        update={"outbox_shards": SHARDS, "relay_batch_size": 100, "relay_lock_retry_seconds": 0.5}
    )
    shard_ids = [settings.relay_shard_transactional_id(s) for s in range(SHARDS)]
    rows = [record(settings, n) for n in range(total)]
    assert {shard_of(r.key, SHARDS) for r in rows} == set(range(SHARDS))
    # Half the rows first; the other half commit just before the kill, so that the
    # holder is killed with rows left in every shard however fast it drains the first.
    first, second = rows[: total // 2], rows[total // 2 :]
    added: Counter[str] = Counter()
    async with Database(settings) as database:
        store = OutboxStore()

        async def add(batch: list[OutboxRecord]) -> None:
            async with database.connection() as conn, conn.transaction():
                for row in batch:
                    await store.add(conn, row, settings.outbox_max_attempts)
            added.update(shard_ids[shard_of(row.key, SHARDS)] for row in batch)

        async def shard_counts() -> list[int]:
            counts = await published_by(database, shard_ids, added)
            return [counts[shard_id] for shard_id in shard_ids]

        await add(first)
        holder = workers.start_relay(settings, name="relay-a")
        deadline = time.monotonic() + 180
        # relay-a alone: it takes every shard and publishes from each.
        while min(await shard_counts()) < 1000:
            assert holder.alive and time.monotonic() < deadline, holder.log_tail()
            await asyncio.sleep(0.05)
        taker = workers.start_relay(settings, name="relay-b")
        await asyncio.sleep(1.0)  # relay-b is up and competing for the shards
        await add(second)
        holder.kill()  # kill -9: its sessions close, its locks are free, a batch may be open
        at_kill = await published_by(database, shard_ids, added)
        while sum((await published_by(database, shard_ids, added)).values()) < total:
            assert taker.alive and time.monotonic() < deadline + 180, taker.log_tail()
            await asyncio.sleep(0.2)
        after = await published_by(database, shard_ids, added)
    print(f"\npublished at the kill: {dict(at_kill)}; at the end: {dict(after)}")
    assert sum(at_kill.values()) < total, "the kill came after the drain"
    # Every shard with rows left at the kill got them published after it (a loaded
    # machine may let the holder finish a shard before the kill, or hand it to relay-b).
    expected = Counter(shard_ids[shard_of(r.key, SHARDS)] for r in rows)
    assert any(after[s] > at_kill[s] for s in shard_ids), "no shard was taken over"
    for shard_id in shard_ids:
        left = at_kill[shard_id] < expected[shard_id]
        assert after[shard_id] > at_kill[shard_id] or not left, f"{shard_id} never taken over"
        assert after[shard_id] == expected[shard_id], f"{shard_id} published a wrong count"

    records = consume(settings, settings.topic("conversation.outbound"), total, timeout=180)
    keys = Counter(r.headers["idempotency-key"] for r in records)
    assert len(keys) == total, f"{total - len(keys)} rows never arrived"
    assert len(records) == total, f"{len(records) - total} rows arrived twice"
    by_key: dict[bytes | None, list[int]] = defaultdict(list)
    for r in records:
        by_key[r.key].append(int(r.value or b"-1"))
    assert all(values == sorted(values) for values in by_key.values()), "order per key broken"
