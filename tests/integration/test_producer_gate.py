"""The resilient producer's Kafka gate against a real broker that really stops.

The broker stopped here is a private one (``tests.support.private_kafka``) on its own
ports and data: the shared broker is stopped only by the ``stops_services`` phase
(``tests/faults/test_producer_outage.py`` runs :func:`send_across_a_stop` on it).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import ensure_topics
from sa01.outbox.database import Database
from sa01.outbox.producer import (
    DeliveryPath,
    FallbackReason,
    ResilientProducer,
    SendResult,
)
from sa01.outbox.relay import OutboxRelay
from sa01.outbox.store import OutboxRecord
from sa01.resilience.circuit_breaker import BreakerState, BreakerTransition
from tests.support.kafka import consume
from tests.support.private_kafka import PrivateKafka

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def private_kafka() -> Iterator[PrivateKafka]:
    broker = PrivateKafka()
    broker.start()
    try:
        yield broker
    finally:
        broker.remove()


@pytest.fixture
def broker(private_kafka: PrivateKafka) -> PrivateKafka:
    """The private broker, running (a test before may have left it stopped)."""
    private_kafka.start()
    return private_kafka


async def on(broker: PrivateKafka, stack: Settings, **overrides: object) -> Settings:
    """``stack`` (its schema on the shared PostgreSQL) with Kafka on the private broker,
    where the test's topics (the relay's ledger too) are created."""
    settings = stack.model_copy(update={"kafka_bootstrap_servers": broker.bootstrap, **overrides})
    await ensure_topics(settings)
    return settings


async def warm_up(producer: ResilientProducer, settings: Settings) -> int:
    """Send until a record goes through Kafka (a new topic's leader, the producer id);
    the number of sends that went to the outbox meanwhile."""
    deadline = time.monotonic() + 120
    n = 0
    while (await producer.send(record(settings, n, run="warm"))).path is not DeliveryPath.KAFKA:
        assert time.monotonic() < deadline, "no send reached the private broker"
        n += 1
        await asyncio.sleep(0.1)
    return n


def record(settings: Settings, n: int, run: str = "gate") -> OutboxRecord:
    key = f"{run}-{n}"
    return OutboxRecord(
        topic=settings.topic("conversation.outbound"),
        key=f"key-{n % 10}".encode(),
        value=str(n).encode(),
        idempotency_key=key,
        headers={"idempotency-key": key},
    )


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g}s"
        await asyncio.sleep(0.02)


def opened(transitions: list[BreakerTransition]) -> list[BreakerTransition]:
    return [t for t in transitions if t.to_state is BreakerState.OPEN]


async def test_the_gate_opens_on_librdkafkas_broker_down_event_without_any_send(
    stack: Settings, broker: PrivateKafka
) -> None:
    # A minute of send timeout and of open gate: only the error event can open it here.
    settings = await on(
        broker, stack, producer_send_timeout_seconds=60.0, producer_circuit_open_seconds=60.0
    )
    metrics = Metrics()
    async with Database(settings) as database:
        producer = ResilientProducer(settings, database, metrics)
        transitions: list[BreakerTransition] = []
        producer.gate.add_listener(transitions.append)
        await producer.start()
        try:
            unacked = await warm_up(producer, settings)
            before = [await producer.send(record(settings, n)) for n in range(10)]
            await asyncio.to_thread(broker.stop)
            await wait_for(lambda: bool(opened(transitions)), "the gate opening")
            snapshot = producer.gate.snapshot()
            during = [await producer.send(record(settings, n)) for n in range(10, 30)]
        finally:
            await producer.stop()
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM outbox_message WHERE idempotency_key = ANY(%s)",
                ([f"gate-{n}" for n in range(10, 30)],),
            )
            row = await cur.fetchone()
    assert DeliveryPath.KAFKA in {r.path for r in before}
    [first] = opened(transitions)[:1]
    assert first.from_state is BreakerState.CLOSED
    assert first.reason.startswith("librdkafka: "), first.reason
    assert "_ALL_BROKERS_DOWN" in first.reason or "_TRANSPORT" in first.reason, first.reason
    assert snapshot.failed_calls == 0, "a send failed or timed out before the gate opened"
    assert {(r.path, r.fallback) for r in during} == {
        (DeliveryPath.OUTBOX, FallbackReason.GATE_OPEN)
    }
    assert row is not None and row[0] == 20
    rendered = metrics.render().decode()
    assert 'circuit_breaker_state{name="kafka:producer"} 1.0' in rendered
    # A send that outlived its budget went to the outbox, and librdkafka kept its record:
    # its report may come after the stop, failed, and count. No other failure may.
    unacked += sum(1 for r in before if r.path is not DeliveryPath.KAFKA)
    failures = re.search(
        r'circuit_breaker_calls_total\{name="kafka:producer",outcome="failure"\} (\S+)', rendered
    )
    assert failures is not None and float(failures.group(1)) <= unacked, (failures, unacked)


async def test_after_the_broker_returns_a_trial_send_closes_the_gate(
    stack: Settings, broker: PrivateKafka
) -> None:
    settings = await on(
        broker, stack, producer_send_timeout_seconds=10.0, producer_circuit_open_seconds=1.0
    )
    async with Database(settings) as database:
        producer = ResilientProducer(settings, database, Metrics())
        transitions: list[BreakerTransition] = []
        producer.gate.add_listener(transitions.append)
        await producer.start()
        try:
            await warm_up(producer, settings)
            await asyncio.to_thread(broker.stop)
            await wait_for(lambda: bool(opened(transitions)), "the gate opening")
            await asyncio.to_thread(broker.start)
            results: list[SendResult] = []
            deadline = time.monotonic() + 120
            while not results or results[-1].path is not DeliveryPath.KAFKA:
                assert time.monotonic() < deadline, f"no send reached Kafka again: {results}"
                results.append(await producer.send(record(settings, len(results) + 1)))
                await asyncio.sleep(0.1)
            state = producer.gate.state
        finally:
            await producer.stop()
    assert state is BreakerState.CLOSED
    assert (BreakerState.HALF_OPEN, BreakerState.CLOSED) in [
        (t.from_state, t.to_state) for t in transitions
    ]
    assert {r.path for r in results[:-1]} <= {DeliveryPath.OUTBOX}


async def test_the_first_send_waits_for_the_leader_connection_then_the_budget_applies(
    broker: PrivateKafka, stack: Settings
) -> None:
    # A budget no acknowledgement can meet: only the cold-start allowance lets the first
    # send through Kafka; the second has the budget alone and is kept in the outbox.
    settings = await on(broker, stack, producer_send_budget_seconds=0.000_001)
    async with Database(settings) as database:
        producer = ResilientProducer(settings, database, Metrics())
        await producer.start()
        try:
            first = await producer.send(record(settings, 1, run="cold"))
            second = await producer.send(record(settings, 2, run="cold"))
        finally:
            await producer.stop()
    assert first.path is DeliveryPath.KAFKA, first
    assert (second.path, second.fallback) == (DeliveryPath.OUTBOX, FallbackReason.BUDGET)


async def test_a_send_kafka_does_not_acknowledge_within_the_budget_is_kept_in_the_outbox(
    stack: Settings,
) -> None:
    # A broker that accepts the connection and never answers: no error event for seconds.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings = stack.model_copy(
            update={
                "kafka_bootstrap_servers": f"127.0.0.1:{silent.getsockname()[1]}",
                "producer_send_timeout_seconds": 2.0,
            }
        )
        async with Database(settings) as database:
            producer = ResilientProducer(settings, database, Metrics())
            await producer.start()
            try:
                result = await producer.send(record(settings, 1, run="budget"))
                state = producer.gate.state
            finally:
                await producer.stop()
            async with database.connection() as conn:
                cur = await conn.execute("SELECT idempotency_key FROM outbox_message")
                keys = [r[0] for r in await cur.fetchall()]
    assert (result.path, result.fallback) == (DeliveryPath.OUTBOX, FallbackReason.BUDGET)
    assert state is BreakerState.CLOSED, "the budget moved the gate"
    assert keys == ["budget-1"]


# ------------------------------------------------------- sending across a broker stop


@dataclass
class Outage:
    """What :func:`send_across_a_stop` saw."""

    sent: int
    results: list[tuple[float, SendResult]]
    """(seconds since the broker was gone, result) of every send after the stop."""
    transitions: list[BreakerTransition]
    arrived: Counter[str]
    """Deliveries per idempotency key on the topic, once the relay drained the outbox."""


async def send_across_a_stop(
    settings: Settings, stop: Callable[[], None], start: Callable[[], None], run: str
) -> Outage:
    """Send one record after another while the broker is stopped, for a second after it is
    gone, then start it, drain the outbox and count what arrived."""
    async with Database(settings) as database:
        producer = ResilientProducer(settings, database, Metrics())
        transitions: list[BreakerTransition] = []
        producer.gate.add_listener(transitions.append)
        await producer.start()
        await warm_up(producer, settings)
        sent = 0
        results: list[tuple[float, SendResult]] = []
        stopping = asyncio.create_task(asyncio.to_thread(stop))
        try:
            while not stopping.done():
                await producer.send(record(settings, sent, run))
                sent += 1
            await stopping
            gone = time.monotonic()
            while time.monotonic() - gone < 1.0:
                result = await producer.send(record(settings, sent, run))
                results.append((time.monotonic() - gone, result))
                sent += 1
        finally:
            await asyncio.to_thread(start)
            await producer.stop()
        relay = OutboxRelay(settings, database, Metrics())
        deadline = time.monotonic() + 180
        while True:
            try:
                await relay.drain(lock_timeout=30)
                break
            except Exception:
                assert time.monotonic() < deadline, "the relay could not drain the outbox"
                await asyncio.sleep(1.0)
    records = await asyncio.to_thread(
        consume, settings, settings.topic("conversation.outbound"), sent, timeout=180, settle=5.0
    )
    arrived = Counter(r.headers["idempotency-key"] for r in records)
    return Outage(sent, results, transitions, arrived)


def check_outage(outage: Outage, run: str) -> None:
    """Every record arrived; no send after the stop waited for Kafka's timeout."""
    missing = {f"{run}-{n}" for n in range(outage.sent)} - set(outage.arrived)
    assert not missing, f"{len(missing)} records lost"
    assert outage.results, "no send after the stop"
    reasons = Counter(result.fallback for _, result in outage.results)
    assert reasons[FallbackReason.DELIVERY_FAILED] == 0, reasons
    first = opened(outage.transitions)
    assert first and first[0].reason.startswith(("librdkafka: ", "health monitor: ")), first
    assert reasons[FallbackReason.GATE_OPEN] > 0, reasons


async def test_every_send_across_a_broker_stop_is_kept_and_none_waits_for_a_timeout(
    stack: Settings, broker: PrivateKafka
) -> None:
    settings = await on(broker, stack, producer_send_timeout_seconds=30.0)
    outage = await send_across_a_stop(settings, broker.stop, broker.start, "across")
    check_outage(outage, "across")
