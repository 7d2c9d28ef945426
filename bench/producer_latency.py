"""Resilient producer: send latency across the moment the broker stops, every send counted.

Runs on a private broker (``tests.support.private_kafka``: its own ports and data under
/tmp), never the shared one, which this bench stops and starts. PostgreSQL is the
shared one (a schema of its own).

Phases, all sequential sends of 200 B records over 50 keys:

1. broker up: p50/p99 (baseline: a raw confluent-kafka produce + flush) and sends/s in
   waves of 200;
2. the stop: one sender sends without pause while the broker is stopped; every send is
   timed, from before the stop command until 1 s after the broker process is gone. The
   goals: every send in that first second < 50 ms, p99 < 10 ms;
3. broker down: p50/p99 and sends/s (baseline: a raw PostgreSQL INSERT in autocommit,
   the outbox path's floor).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench.common import drop, isolated_settings, percentile, table, write_result
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.producer import ResilientProducer, SendResult
from sa01.outbox.store import OutboxRecord
from tests.support.private_kafka import PrivateKafka

GOAL_MAX_MS = 50.0
GOAL_P99_MS = 10.0
AFTER_STOP_SECONDS = 1.0


def record(settings: Settings, n: int) -> OutboxRecord:
    key = f"lat-{n}-{time.monotonic_ns()}"
    return OutboxRecord(
        topic=settings.topic("conversation.outbound"),
        key=f"key-{n % 50}".encode(),
        value=b"y" * 200,
        idempotency_key=key,
        headers={"idempotency-key": key},
    )


def how(result: SendResult) -> str:
    """``kafka``, or ``outbox`` with the fallback reason when the producer gives one."""
    reason = getattr(result, "fallback", None)
    return result.path.value if reason is None else f"{result.path.value}:{reason}"


async def sequential(
    producer: ResilientProducer, settings: Settings, n: int
) -> tuple[list[float], Counter[str]]:
    latencies = []
    paths: Counter[str] = Counter()
    for i in range(n):
        started = time.perf_counter()
        result = await producer.send(record(settings, i))
        latencies.append((time.perf_counter() - started) * 1000)
        paths[how(result)] += 1
    return latencies, paths


async def concurrent(producer: ResilientProducer, settings: Settings, n: int) -> float:
    started = time.perf_counter()
    for start in range(0, n, 200):
        await asyncio.gather(
            *(producer.send(record(settings, i)) for i in range(start, start + 200))
        )
    return n / (time.perf_counter() - started)


async def across_the_stop(
    producer: ResilientProducer, settings: Settings, broker: PrivateKafka
) -> dict[str, Any]:
    """Send without pause while the broker stops and for a second after it is gone."""
    sends: list[tuple[float, float, str]] = []  # (start since the stop command, ms, path)
    stop_issued = time.perf_counter()
    stopping = asyncio.create_task(asyncio.to_thread(broker.stop))
    n = 0
    gone: float | None = None
    while gone is None or time.perf_counter() - gone < AFTER_STOP_SECONDS:
        started = time.perf_counter()
        result = await producer.send(record(settings, n))
        sends.append((started - stop_issued, (time.perf_counter() - started) * 1000, how(result)))
        n += 1
        if gone is None and stopping.done():
            await stopping
            gone = time.perf_counter()
    assert gone is not None
    gone_at = gone - stop_issued
    stopping_ms = [ms for at, ms, _ in sends if at < gone_at]
    first_second = [(ms, path) for at, ms, path in sends if at >= gone_at]
    latencies = [ms for ms, _ in first_second]
    return {
        "stop_command_seconds": gone_at,
        "sends_while_stopping": len(stopping_ms),
        "while_stopping_max_ms": max(stopping_ms, default=float("nan")),
        "while_stopping_p99_ms": percentile(stopping_ms, 99),
        "first_second_sends": len(latencies),
        "first_second_p50_ms": percentile(latencies, 50),
        "first_second_p99_ms": percentile(latencies, 99),
        "first_second_max_ms": max(latencies, default=float("nan")),
        "first_second_over_50ms": sum(1 for ms in latencies if ms >= GOAL_MAX_MS),
        "first_second_paths": dict(Counter(path for _, path in first_second)),
        "first_sends_after_stop_ms": [round(ms, 2) for ms in latencies[:5]],
        "slowest_sends_ms": sorted((round(ms, 1) for _, ms, _ in sends), reverse=True)[:5],
    }


def raw_kafka_latencies(settings: Settings, n: int) -> list[float]:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
        }
    )
    latencies = []
    for _i in range(n):
        started = time.perf_counter()
        producer.produce(settings.topic("conversation.outbound"), key=b"k", value=b"y" * 200)
        producer.flush(10)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def raw_insert_latencies(database: Database, n: int) -> list[float]:
    latencies = []
    async with database.connection() as conn:
        for i in range(n):
            started = time.perf_counter()
            await conn.execute(
                "INSERT INTO outbox_message (idempotency_key, topic, payload) VALUES (%s, %s, %s)",
                (f"raw-{i}-{time.monotonic_ns()}", "raw", b"y" * 200),
            )
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def run(quick: bool) -> dict[str, Any]:
    n = 500 if quick else 2000
    broker = PrivateKafka()
    await asyncio.to_thread(broker.start)
    try:
        settings = await isolated_settings(
            kafka_bootstrap_servers=broker.bootstrap, producer_send_timeout_seconds=2.0
        )
        try:
            result = await measure(settings, broker, n)
        finally:
            await asyncio.to_thread(broker.start)
            await drop(settings)
    finally:
        await asyncio.to_thread(broker.remove)
    report(result)
    write_result("producer_latency", result)
    return result


def wait_for_leaders(settings: Settings, timeout: float = 60.0) -> None:
    """Until the topic's partitions have leaders (a send before that only waits)."""
    topic = settings.topic("conversation.outbound")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            if all(p.leader >= 0 for p in meta.partitions.values()):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{topic} has no leader after {timeout:g} s")


async def measure(settings: Settings, broker: PrivateKafka, n: int) -> dict[str, Any]:
    await asyncio.to_thread(wait_for_leaders, settings)
    await asyncio.to_thread(raw_kafka_latencies, settings, 20)  # warm the broker up
    async with Database(settings) as database:
        producer = ResilientProducer(settings, database, Metrics())
        await producer.start()
        try:
            up, up_paths = await sequential(producer, settings, n)
            up_rate = await concurrent(producer, settings, n * 5)
            raw_up = await asyncio.to_thread(raw_kafka_latencies, settings, n)
            outage = await across_the_stop(producer, settings, broker)
            down, paths = await sequential(producer, settings, n)
            down_rate = await concurrent(producer, settings, n * 5)
            raw_down = await raw_insert_latencies(database, n)
        finally:
            await producer.stop()
    return {
        "workload": (
            f"200 B records, 50 keys; {n} sequential sends, {n * 5} in waves of 200; "
            f"sends without pause across the broker's stop until {AFTER_STOP_SECONDS:g} s "
            "after it is gone (private broker)"
        ),
        "broker_up": {
            "p50_ms": percentile(up, 50),
            "p99_ms": percentile(up, 99),
            "throughput_per_s": up_rate,
            "paths": dict(up_paths),
        },
        "broker_up_raw_confluent": {
            "p50_ms": percentile(raw_up, 50),
            "p99_ms": percentile(raw_up, 99),
        },
        "broker_stop": outage,
        "broker_down": {
            "p50_ms": percentile(down, 50),
            "p99_ms": percentile(down, 99),
            "throughput_per_s": down_rate,
            "paths": dict(paths),
        },
        "broker_down_raw_insert": {
            "p50_ms": percentile(raw_down, 50),
            "p99_ms": percentile(raw_down, 99),
        },
    }


def report(result: dict[str, Any]) -> None:
    b, r, s, d, i = (
        result[k]
        for k in (
            "broker_up",
            "broker_up_raw_confluent",
            "broker_stop",
            "broker_down",
            "broker_down_raw_insert",
        )
    )
    print(
        table(
            [
                ("resilient producer", "p50 ms", "p99 ms", "sends/s", "baseline p50", "ratio p50"),
                (
                    "broker up (Kafka path)",
                    f"{b['p50_ms']:.2f}",
                    f"{b['p99_ms']:.2f}",
                    f"{b['throughput_per_s']:,.0f}",
                    f"raw confluent {r['p50_ms']:.2f}",
                    f"{b['p50_ms'] / r['p50_ms']:.2f}",
                ),
                (
                    "broker down (outbox path)",
                    f"{d['p50_ms']:.2f}",
                    f"{d['p99_ms']:.2f}",
                    f"{d['throughput_per_s']:,.0f}",
                    f"raw INSERT {i['p50_ms']:.2f}",
                    f"{d['p50_ms'] / i['p50_ms']:.2f}",
                ),
            ]
        )
    )
    met = s["first_second_over_50ms"] == 0 and s["first_second_p99_ms"] < GOAL_P99_MS
    print(
        table(
            [
                ("across the stop", "sends", "p50 ms", "p99 ms", "max ms", ">= 50 ms", "goal"),
                (
                    "while the broker stops",
                    str(s["sends_while_stopping"]),
                    "",
                    f"{s['while_stopping_p99_ms']:.2f}",
                    f"{s['while_stopping_max_ms']:.1f}",
                    "",
                    "",
                ),
                (
                    f"first {AFTER_STOP_SECONDS:g} s after it is gone",
                    str(s["first_second_sends"]),
                    f"{s['first_second_p50_ms']:.2f}",
                    f"{s['first_second_p99_ms']:.2f}",
                    f"{s['first_second_max_ms']:.1f}",
                    str(s["first_second_over_50ms"]),
                    "met" if met else "NOT met",
                ),
            ]
        )
    )
    print(
        f"stop command took {s['stop_command_seconds']:.1f} s; first sends after it: "
        f"{', '.join(f'{v:g}' for v in s['first_sends_after_stop_ms'])} ms; paths in the "
        f"first second: {s['first_second_paths']}; slowest sends: {s['slowest_sends_ms']} ms; "
        f"broker up paths: {b['paths']}"
    )
