"""The outbox relay on the real broker and database: once, in order, after crashes."""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from sa01.core.errors import ServiceUnavailableError
from sa01.core.kafka_security import librdkafka_config
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import OUTBOX_LEDGER
from sa01.outbox.database import Database
from sa01.outbox.ledger import encode_entry, id_ranges, read_last_entry
from sa01.outbox.relay import OutboxRelay, Shard
from sa01.outbox.store import ClaimedRow, OutboxRecord, OutboxStore, key_hash, shard_of
from sa01.outbox.transactions import BatchOutcome, LedgerRecord, TransactionalPublisher
from tests.support.kafka import consume

pytestmark = pytest.mark.integration


async def add_rows(
    database: Database, settings: Settings, count: int, keys: int = 5, start: int = 0
) -> None:
    store = OutboxStore()
    topic = settings.topic("conversation.outbound")
    async with database.connection() as conn, conn.transaction():
        for n in range(start, start + count):
            await store.add(
                conn,
                OutboxRecord(
                    topic=topic,
                    key=f"key-{n % keys}".encode(),
                    value=f"{n}".encode(),
                    idempotency_key=f"row-{n}",
                    headers={"idempotency-key": f"row-{n}"},
                ),
                settings.outbox_max_attempts,
            )


async def statuses(database: Database) -> dict[str, int]:
    async with database.connection() as conn:
        cur = await conn.execute("SELECT status, count(*) FROM outbox_message GROUP BY status")
        return {str(status): int(n) for status, n in await cur.fetchall()}


def values_by_key(settings: Settings, count: int) -> dict[bytes, list[int]]:
    records = consume(settings, settings.topic("conversation.outbound"), count)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for record in records:
        assert record.key is not None and record.value is not None
        by_key[record.key].append(int(record.value))
    return by_key


@pytest.mark.parametrize(("retention", "left"), [(0, {}), (3600, {"published": 300})])
async def test_rows_are_published_once_in_order_per_key_with_their_headers(
    stack: Settings, retention: int, left: dict[str, int]
) -> None:
    """Published rows are deleted, or kept marked published for the retention."""
    stack = stack.model_copy(update={"outbox_retention_seconds": retention})
    async with Database(stack) as database:
        await add_rows(database, stack, 300)
        published = await OutboxRelay(stack, database, Metrics()).drain()
        assert published == 300
        assert await statuses(database) == left

    records = consume(stack, stack.topic("conversation.outbound"), 300)
    assert len(records) == 300
    assert {r.headers["idempotency-key"] for r in records} == {f"row-{n}" for n in range(300)}
    by_key = values_by_key(stack, 300)
    for key, values in by_key.items():
        assert values == sorted(values), f"{key!r} out of order"


async def test_two_batches_committed_before_a_crash_are_not_published_again(
    stack: Settings,
) -> None:
    """The pipelined relay dies with batch k-1 and batch k committed, neither settled:
    k's ledger record names the rows of both."""
    relay_id = stack.relay_transactional_id
    store = OutboxStore()
    ledger_topic = stack.topic(OUTBOX_LEDGER)
    async with Database(stack) as database:
        await add_rows(database, stack, 50)
        last = (await read_last_entry(stack, ledger_topic, relay_id)).seq
        publisher = TransactionalPublisher(stack, relay_id)
        await publisher.start()
        async with database.connection() as conn:
            first = await store.claim(conn, 20)
            second = await store.claim(conn, 20, skip=id_ranges(r.id for r in first))
        assert not {r.id for r in first} & {r.id for r in second}
        for seq, rows, unsettled in (
            (last + 1, first, first),
            (last + 2, second, second + first),
        ):
            entry = encode_entry(seq, id_ranges(r.id for r in unsettled))
            result = await publisher.publish(
                rows, LedgerRecord(ledger_topic, relay_id.encode(), entry)
            )
            assert result.outcome is BatchOutcome.COMMITTED
        await publisher.close()
        assert await statuses(database) == {"pending": 50}  # the crash: nothing settled

        published = await OutboxRelay(stack, database, Metrics()).drain()

        assert published == 10
        assert await statuses(database) == {}
        assert (await read_last_entry(stack, ledger_topic, relay_id)).seq > last + 2
    records = consume(stack, stack.topic("conversation.outbound"), 50, settle=3.0)
    assert sorted(int(r.value or b"") for r in records) == list(range(50))


async def claim_the_old_way(database: Database, relay_id: str, seq: int, limit: int) -> list[int]:
    """What the earlier relay's claim did: rows marked ``publishing`` under a sequence."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "UPDATE outbox_message SET status = 'publishing', claimed_by = %s, claim_seq = %s"
            " WHERE id IN (SELECT id FROM outbox_message WHERE status = 'pending'"
            " ORDER BY id LIMIT %s) RETURNING id",
            (relay_id, seq, limit),
        )
        return sorted(int(row[0]) for row in await cur.fetchall())


async def test_a_batch_of_the_earlier_protocol_committed_before_an_upgrade_is_not_published_again(
    stack: Settings,
) -> None:
    relay_id = stack.relay_transactional_id
    ledger_topic = stack.topic(OUTBOX_LEDGER)
    async with Database(stack) as database:
        await add_rows(database, stack, 50)
        seq = (await read_last_entry(stack, ledger_topic, relay_id)).seq + 1
        ids = set(await claim_the_old_way(database, relay_id, seq, 20))
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT id, topic, partition_key, payload FROM outbox_message WHERE id = ANY(%s)",
                (sorted(ids),),
            )
            old = await cur.fetchall()
        publisher = TransactionalPublisher(stack, relay_id)
        await publisher.start()
        old_entry = json.dumps({"seq": seq}).encode()  # the earlier ledger value: no ids
        claimed = [
            ClaimedRow(i, t, bytes(k), bytes(v), {}, f"row-{i}", 0, 10) for i, t, k, v in old
        ]
        result = await publisher.publish(
            claimed, LedgerRecord(ledger_topic, relay_id.encode(), old_entry)
        )
        await publisher.close()
        assert result.outcome is BatchOutcome.COMMITTED
        assert (await statuses(database))["publishing"] == 20

        published = await OutboxRelay(stack, database, Metrics()).drain()

        assert published == 30
        assert await statuses(database) == {"published": 20}  # settled the old way
    records = consume(stack, stack.topic("conversation.outbound"), 50, settle=3.0)
    assert sorted(int(r.value or b"") for r in records) == list(range(50))


async def test_a_batch_of_the_earlier_protocol_never_committed_is_published_after_an_upgrade(
    stack: Settings,
) -> None:
    relay_id = stack.relay_transactional_id
    async with Database(stack) as database:
        await add_rows(database, stack, 40)
        await claim_the_old_way(database, relay_id, 999, 25)  # crashed before Kafka saw it

        published = await OutboxRelay(stack, database, Metrics()).drain()

        assert published == 40
        assert await statuses(database) == {}
    records = consume(stack, stack.topic("conversation.outbound"), 40, settle=3.0)
    assert sorted(int(r.value or b"") for r in records) == list(range(40))


async def test_a_row_committed_during_the_relays_last_empty_claim_is_published_at_once(
    stack: Settings,
) -> None:
    """A wake-up that arrives while the claim that finds nothing runs is not lost: the
    row is published now, not at the next poll (60 s here)."""
    settings = stack.model_copy(update={"relay_poll_interval_seconds": 60.0})
    async with Database(settings) as database:
        relay = OutboxRelay(settings, database, Metrics())
        claim = relay.store.claim
        planted = asyncio.Event()

        async def claim_then_commit_a_row(*args: Any, **kwargs: Any) -> list[ClaimedRow]:
            rows = await claim(*args, **kwargs)
            if not rows and not planted.is_set():
                planted.set()  # a writer commits a row and wakes the relay just now
                await add_rows(database, settings, 1)
                relay.wake()
            return rows

        relay.store.claim = claim_then_commit_a_row  # type: ignore[method-assign]
        await relay.start()
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while not planted.is_set() or await statuses(database) != {}:
                assert asyncio.get_running_loop().time() < deadline, await statuses(database)
                await asyncio.sleep(0.1)
        finally:
            await relay.stop()
    [record] = consume(settings, settings.topic("conversation.outbound"), 1)
    assert record.value == b"0"


async def test_only_one_relay_is_active_and_the_other_waits(stack: Settings) -> None:
    async with Database(stack) as database:
        active = OutboxRelay(stack, database, Metrics())
        await active.start()
        try:
            for _ in range(100):
                if active.active:
                    break
                await asyncio.sleep(0.1)
            assert active.active
            standby = OutboxRelay(stack, database, Metrics())
            with pytest.raises(ServiceUnavailableError, match="another relay holds the lock"):
                await standby.drain(lock_timeout=1.5)
            assert not standby.active
        finally:
            await active.stop()


async def test_postgresql_and_python_agree_on_the_hash_of_a_key(stack: Settings) -> None:
    keys: list[bytes | None] = [None, b"", b"key-1", "tenant:séance".encode(), bytes(range(256))]
    async with Database(stack) as database, database.connection() as conn:
        for key in keys:
            cur = await conn.execute("SELECT outbox_key_hash(%s)", (key,))
            row = await cur.fetchone()
            assert row is not None and int(row[0]) == key_hash(key), key


async def test_three_shards_publish_each_row_once_in_order_and_only_their_own_keys(
    stack: Settings,
) -> None:
    settings = stack.model_copy(
        update={"outbox_shards": 3, "relay_batch_size": 20, "outbox_retention_seconds": 3600}
    )
    async with Database(settings) as database:
        await add_rows(database, settings, 300, keys=12)
        published = await OutboxRelay(settings, database, Metrics()).drain()
        assert published == 300
        assert await statuses(database) == {"published": 300}
        async with database.connection() as conn:
            cur = await conn.execute("SELECT partition_key, claimed_by FROM outbox_message")
            claims = {(bytes(key), str(by)) for key, by in await cur.fetchall()}
    expected = {(key, settings.relay_shard_transactional_id(shard_of(key, 3))) for key, _ in claims}
    assert claims == expected
    assert len({by for _, by in claims}) == 3, "some shard published nothing"
    by_key = values_by_key(settings, 300)
    assert sum(len(v) for v in by_key.values()) == 300
    for key, values in by_key.items():
        assert values == sorted(values), f"{key!r} out of order"
    for shard in Shard.all_of(settings):
        entry = await read_last_entry(settings, settings.topic(OUTBOX_LEDGER), shard.relay_id)
        # Every shard published more than one batch of 20: its last ledger record names
        # the rows of its last two batches.
        assert entry.seq > 1 and sum(last - first + 1 for first, last in entry.ids) > 20, entry


async def test_a_relay_holding_every_shard_hands_some_to_a_second_relay(stack: Settings) -> None:
    settings = stack.model_copy(update={"outbox_shards": 2, "relay_lock_retry_seconds": 0.2})
    async with Database(settings) as database:
        first = OutboxRelay(settings, database, Metrics())
        second = OutboxRelay(settings, database, Metrics())
        await first.start()
        try:
            await wait_for(lambda: first.held == [0, 1])
            await second.start()
            await wait_for(lambda: len(first.held) == len(second.held) == 1, timeout=60)
            assert sorted(first.held + second.held) == [0, 1]
        finally:
            await second.stop()
            await first.stop()


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.1)


async def test_a_record_the_broker_refuses_costs_only_its_own_row_attempts(
    stack: Settings,
) -> None:
    """The broker refuses one record of a batch (larger than its topic allows): the
    failed delivery report names that row alone; it is dead-lettered after its attempts,
    and every other row of the batch is published once, in order."""
    settings = stack.model_copy(update={"outbox_max_attempts": 2})
    small = settings.topic("orders.small")
    admin = AdminClient(librdkafka_config(settings))
    for topic, config in ((small, {"max.message.bytes": "2000"}), (f"{small}.dlq", {})):
        admin.create_topics([NewTopic(topic, 1, 1, config=config)])[topic].result()
    refused = os.urandom(20_000)  # lz4 cannot shrink it under the topic's 2,000 bytes
    async with Database(settings) as database:
        await add_rows(database, settings, 10)
        async with database.connection() as conn:
            await OutboxStore().add(
                conn,
                OutboxRecord(topic=small, key=b"big", value=refused, idempotency_key="big"),
                settings.outbox_max_attempts,
            )
        await add_rows(database, settings, 10, start=10)
        relay = OutboxRelay(settings, database, Metrics())
        await relay.start()
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while await statuses(database) != {"failed": 1}:
                assert asyncio.get_running_loop().time() < deadline, await statuses(database)
                await asyncio.sleep(0.2)
        finally:
            await relay.stop()
    [dead] = consume(settings, f"{small}.dlq", 1)
    assert dead.value == refused and dead.headers["dlq.attempts"] == "2"
    by_key = values_by_key(settings, 20)
    assert sorted(v for values in by_key.values() for v in values) == list(range(20))
    for key, values in by_key.items():
        assert values == sorted(values), f"{key!r} out of order"


async def test_a_claim_stops_before_its_payloads_pass_the_byte_bound(stack: Settings) -> None:
    async with Database(stack) as database:
        await add_rows(database, stack, 10)  # payloads "0" to "9": one byte each
        store = OutboxStore()
        async with database.connection() as conn:
            assert len(await store.claim(conn, 100, max_bytes=3)) == 3
            [first] = await store.claim(conn, 100, max_bytes=1)
            assert first.value == b"0"  # the first row whatever its size
            assert len(await store.claim(conn, 100)) == 10


async def test_a_row_committed_late_with_a_lower_id_is_claimed_before_its_keys_next_row(
    stack: Settings,
) -> None:
    """Ids are taken in one order and committed in another (two group commits): the
    claim after a batch still reads from the lowest id, so a key's rows go out in order."""
    store = OutboxStore()
    topic = stack.topic("conversation.outbound")

    def row(n: int, key: bytes) -> OutboxRecord:
        return OutboxRecord(topic=topic, key=key, value=b"%d" % n, idempotency_key=f"late-{n}")

    async with Database(stack) as database:
        relay = OutboxRelay(stack, database, Metrics())
        [shard] = relay.shards
        async with database.connection() as late, database.connection() as early:
            async with late.transaction():
                await store.add(late, row(1, b"k"), 10)  # the lower id, committed last
                async with early.transaction():
                    await store.add(early, row(2, b"other"), 10)
                first = await shard._claim([])
                assert first is not None and [r.value for r in first.rows] == [b"2"]
            await store.add(early, row(3, b"k"), 10)  # the key's next row, after row 1
        following = await shard._claim(first.ids)
    assert following is not None
    assert [r.value for r in following.rows] == [b"1", b"3"]


async def test_a_claim_reads_below_between_and_above_the_rows_it_skips(stack: Settings) -> None:
    async with Database(stack) as database:
        await add_rows(database, stack, 10)
        store = OutboxStore()
        async with database.connection() as conn:
            ids = [row.id for row in await store.claim(conn, 100)]
            one = [ids[3], ids[4], ids[5]]
            two = [ids[2], ids[3], ids[7], ids[8]]
            for skip in (one, two, []):
                claimed = [r.id for r in await store.claim(conn, 100, skip=id_ranges(skip))]
                assert claimed == [i for i in ids if i not in skip], skip
            first_three = await store.claim(conn, 3, skip=id_ranges([ids[0], ids[5]]))
            assert [r.id for r in first_three] == [ids[1], ids[2], ids[3]]
