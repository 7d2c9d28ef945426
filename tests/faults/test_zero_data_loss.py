"""Zero data loss under real faults: broker stopped, PostgreSQL stopped, relay killed."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from urllib.parse import urlsplit

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.dead_letter_store import DeadLetterFilter
from sa01.outbox.producer import DeliveryPath, ProducerUnavailableError, ResilientProducer
from sa01.outbox.relay import OutboxRelay
from sa01.outbox.store import OutboxRecord, OutboxStore
from streams.dlq import run_dlq
from tests.fix_services import ServiceEndpoints
from tests.support.kafka import consume
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.faults


def record(
    settings: Settings, n: int, keys: int = 20, topic: str = "conversation.outbound"
) -> OutboxRecord:
    return OutboxRecord(
        topic=settings.topic(topic),
        key=f"key-{n % keys}".encode(),
        value=str(n).encode(),
        idempotency_key=f"message-{n}",
        headers={"idempotency-key": f"message-{n}"},
    )


async def drain_until_published(relay: OutboxRelay, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    total = 0
    while True:
        try:
            total += await relay.drain(lock_timeout=30)
            return total
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def published(database: Database, total: int) -> int:
    """Rows of the ``total`` added that the relays settled (published rows are deleted)."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM outbox_message WHERE status IN ('pending', 'publishing')"
        )
        row = await cur.fetchone()
    return total - int(row[0] if row else 0)


async def count_status(database: Database) -> dict[str, int]:
    async with database.connection() as conn:
        cur = await conn.execute("SELECT status, count(*) FROM outbox_message GROUP BY status")
        return {str(s): int(n) for s, n in await cur.fetchall()}


@pytest.mark.stops_services
async def test_broker_stopped_while_10000_messages_are_sent_all_arrive_after_the_relay_drains(
    stack: Settings, services: ServiceEndpoints
) -> None:
    settings = stack.model_copy(update={"producer_send_timeout_seconds": 3.0})
    total = 10_000
    async with Database(settings) as database:
        producer = ResilientProducer(settings, database, Metrics())
        await producer.start()
        paths: Counter[DeliveryPath] = Counter()
        stopping: asyncio.Task[None] | None = None
        try:
            for start in range(0, total, 250):
                if start == 2500:
                    stopping = asyncio.create_task(
                        asyncio.to_thread(services.control, "stop", "kafka")
                    )
                results = await asyncio.gather(
                    *(producer.send(record(settings, n)) for n in range(start, start + 250))
                )
                paths.update(r.path for r in results)
            assert stopping is not None
            await stopping
        finally:
            await asyncio.to_thread(services.control, "start", "kafka")
            await producer.stop()
        print(f"\nsent {total}: {dict(paths)}")
        # Before the stop most sends are acked by Kafka; one Kafka does not ack within the
        # send budget (SA01_PRODUCER_SEND_BUDGET_SECONDS) goes to the outbox instead.
        assert paths[DeliveryPath.KAFKA] > 0
        assert paths[DeliveryPath.OUTBOX] > 0
        assert sum(paths.values()) == total

        await drain_until_published(OutboxRelay(settings, database, Metrics()))
        assert (await count_status(database)) == {}  # published rows are deleted

    records = consume(settings, settings.topic("conversation.outbound"), total, timeout=180)
    keys = Counter(r.headers["idempotency-key"] for r in records)
    duplicates = sum(n - 1 for n in keys.values())
    print(f"arrived {len(keys)} distinct of {total}; {duplicates} duplicate deliveries")
    assert len(keys) == total, f"{total - len(keys)} messages lost"


@pytest.mark.stops_services
async def test_postgres_stopped_while_kafka_is_up_loses_nothing(
    stack: Settings, services: ServiceEndpoints
) -> None:
    async with Database(stack) as database:
        producer = ResilientProducer(stack, database, Metrics())
        await producer.start()
        await asyncio.to_thread(services.control, "stop", "postgres")
        try:
            results = await asyncio.gather(*(producer.send(record(stack, n)) for n in range(1000)))
        finally:
            await asyncio.to_thread(services.control, "start", "postgres")
            await producer.stop()
    assert {r.path for r in results} == {DeliveryPath.KAFKA}
    records = consume(stack, stack.topic("conversation.outbound"), 1000)
    assert len({r.headers["idempotency-key"] for r in records}) == 1000


@pytest.mark.stops_services
async def test_with_kafka_and_postgres_down_the_producer_says_so_and_keeps_nothing_silently(
    stack: Settings, services: ServiceEndpoints
) -> None:
    settings = stack.model_copy(update={"producer_send_timeout_seconds": 2.0})
    async with Database(settings) as database:
        producer = ResilientProducer(settings, database, Metrics())
        await producer.start()
        await asyncio.to_thread(services.control, "stop", "kafka")
        await asyncio.to_thread(services.control, "stop", "postgres")
        try:
            with pytest.raises(ProducerUnavailableError) as raised:
                await producer.send(record(settings, 1))
        finally:
            await asyncio.to_thread(services.control, "start", "postgres")
            await asyncio.to_thread(services.control, "start", "kafka")
            await producer.stop()
    message = str(raised.value)
    assert "Kafka refused the record" in message
    database = urlsplit(settings.database_url)
    assert f"PostgreSQL at {database.hostname}:{database.port}" in message
    assert "not stored" in message


async def test_relay_killed_mid_batch_then_restarted_beside_a_second_relay_publishes_each_row_once(
    stack: Settings, workers: WorkerFactory
) -> None:
    total = 20_000
    settings = stack.model_copy(update={"relay_batch_size": 200})
    async with Database(settings) as database:
        store = OutboxStore()
        async with database.connection() as conn, conn.transaction():
            for n in range(total):
                await store.add(conn, record(settings, n), settings.outbox_max_attempts)
        first = workers.start_relay(settings, name="relay-a")
        deadline = time.monotonic() + 120
        while await published(database, total) < 3000:
            assert time.monotonic() < deadline, first.log_tail()
            await asyncio.sleep(0.05)
        first.kill()
        killed_at = await published(database, total)
        workers.start_relay(settings, name="relay-b")
        workers.start_relay(settings, name="relay-c")
        while await published(database, total) < total:
            assert time.monotonic() < deadline + 120, "relays did not finish"
            await asyncio.sleep(0.2)
    print(f"\npublished at the kill: {killed_at}")
    assert killed_at < total, "the kill came after the drain"

    records = consume(settings, settings.topic("conversation.outbound"), total, timeout=120)
    keys = Counter(r.headers["idempotency-key"] for r in records)
    assert len(keys) == total, f"{total - len(keys)} rows never published"
    assert len(records) == total, f"{len(records) - total} rows published twice"
    by_key: dict[bytes | None, list[int]] = defaultdict(list)
    for r in records:
        by_key[r.key].append(int(r.value or b"-1"))
    assert all(values == sorted(values) for values in by_key.values()), "order per key broken"


async def test_a_row_that_cannot_be_published_is_dead_lettered_then_replayed_once_fixed(
    stack: Settings,
) -> None:
    settings = stack.model_copy(update={"outbox_max_attempts": 3})
    missing = settings.topic("orders.created")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(f"{missing}.dlq", 1, 1)])[f"{missing}.dlq"].result()
    async with Database(settings) as database:
        async with database.connection() as conn:
            await OutboxStore().add(
                conn,
                OutboxRecord(topic=missing, key=b"k", value=b"payload", idempotency_key="r1"),
                settings.outbox_max_attempts,
            )
        relay = OutboxRelay(settings, database, Metrics())
        await relay.start()
        try:
            deadline = time.monotonic() + 120
            while (await count_status(database)).get("failed", 0) < 1:
                assert time.monotonic() < deadline, await count_status(database)
                await asyncio.sleep(0.5)
            # consume() blocks: run it in a thread so the relay on this loop keeps going.
            [dead] = await asyncio.to_thread(consume, settings, f"{missing}.dlq", 1)
            assert dead.value == b"payload" and dead.key == b"k"
            assert dead.headers["dlq.attempts"] == "3"
            assert dead.headers["__streams.errors.exception"] == "sa01.outbox.relay.PublishError"

            admin.create_topics([NewTopic(missing, 1, 1)])[missing].result()
            # Replay only once the new topic has a leader: before that the relay's producer
            # may still see it as unknown and burn the row's few attempts.
            while not has_leader(admin, missing):
                assert time.monotonic() < deadline, f"{missing} has no leader"
                await asyncio.sleep(0.2)
            replayed = await run_dlq(
                settings,
                "replay",
                DeadLetterFilter(topic=missing),
                limit=100,
                dry_run=False,
                as_json=False,
            )
            assert replayed == 1
            relay.wake()
            [arrived] = await asyncio.to_thread(consume, settings, missing, 1, settle=3.0)
        finally:
            await relay.stop()
    assert arrived.value == b"payload"
    for name in (missing, f"{missing}.dlq"):
        admin.delete_topics([name])


def has_leader(admin: AdminClient, topic: str) -> bool:
    """Whether every partition of ``topic`` has a leader (the topic is usable)."""
    meta = admin.list_topics(topic, timeout=5).topics.get(topic)
    return bool(
        meta is not None
        and meta.error is None
        and meta.partitions
        and all(p.leader >= 0 for p in meta.partitions.values())
    )
