"""How the resilient producer's gate judges a failed delivery report.

librdkafka's delivery reports are built here (``KafkaError`` and ``Message`` are its own
types); the broker behaviours they stand for are in ``tests/integration/test_producer_gate.py``.
"""

from __future__ import annotations

import asyncio

from confluent_kafka import KafkaError, Message

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.producer import ResilientProducer, _Outcome
from sa01.resilience.circuit_breaker import BreakerState, BreakerTransition


def _producer() -> ResilientProducer:
    settings = Settings(database_schema="t_1", app_id="app", producer_circuit_failures=3)
    return ResilientProducer(settings, Database(settings), Metrics())


async def _report(producer: ResilientProducer, err: KafkaError) -> None:
    permit = producer.gate.acquire_permit()
    assert permit is not None
    loop = asyncio.get_running_loop()
    delivered: asyncio.Future[_Outcome] = loop.create_future()
    ready: asyncio.Future[_Outcome] = loop.create_future()
    producer._settle(permit, delivered, ready, err, Message(topic="t", partition=3))
    assert ready.done() and delivered.done()


async def test_a_leaderless_partition_opens_the_gate_at_once() -> None:
    producer = _producer()
    seen: list[BreakerTransition] = []
    producer.gate.add_listener(seen.append)
    await _report(producer, KafkaError(KafkaError.LEADER_NOT_AVAILABLE))
    assert producer.gate.state is BreakerState.OPEN
    [opened] = seen
    assert opened.reason.startswith("librdkafka: delivery failed: LEADER_NOT_AVAILABLE"), opened


async def test_a_broker_side_failure_of_another_kind_only_counts() -> None:
    producer = _producer()
    await _report(producer, KafkaError(KafkaError.NOT_ENOUGH_REPLICAS))
    assert producer.gate.state is BreakerState.CLOSED


async def test_the_records_own_fault_never_counts() -> None:
    producer = _producer()
    for _ in range(5):
        await _report(producer, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert producer.gate.state is BreakerState.CLOSED
