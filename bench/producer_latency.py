"""Resilient producer: send latency and throughput with the broker up and with it down.

Baselines in the same run: a raw confluent-kafka produce-and-wait (broker up) and a raw
PostgreSQL INSERT in autocommit (broker down: the outbox path's floor).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench.common import drop, isolated_settings, percentile, table, write_result
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.producer import DeliveryPath, ResilientProducer
from sa01.outbox.store import OutboxRecord

SERVICES = Path(__file__).resolve().parent.parent / "scripts" / "services.sh"


def record(settings: Settings, n: int) -> OutboxRecord:
    return OutboxRecord(
        topic=settings.topic("conversation.outbound"),
        key=f"key-{n % 50}".encode(),
        value=b"y" * 200,
        idempotency_key=f"lat-{n}-{time.monotonic_ns()}",
    )


async def sequential(
    producer: ResilientProducer, settings: Settings, n: int
) -> tuple[list[float], dict[str, int]]:
    latencies = []
    paths = {p.value: 0 for p in DeliveryPath}
    for i in range(n):
        started = time.perf_counter()
        result = await producer.send(record(settings, i))
        latencies.append((time.perf_counter() - started) * 1000)
        paths[result.path.value] += 1
    return latencies, paths


async def concurrent(producer: ResilientProducer, settings: Settings, n: int) -> float:
    started = time.perf_counter()
    for start in range(0, n, 200):
        await asyncio.gather(
            *(producer.send(record(settings, i)) for i in range(start, start + 200))
        )
    return n / (time.perf_counter() - started)


def raw_kafka_latencies(settings: Settings, n: int) -> list[float]:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
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


def kafka(action: str) -> None:
    subprocess.run([str(SERVICES), action, "kafka"], check=True, capture_output=True, timeout=180)


async def run(quick: bool) -> dict[str, Any]:
    n = 500 if quick else 2000
    settings = await isolated_settings(producer_send_timeout_seconds=2.0)
    try:
        async with Database(settings) as database:
            producer = ResilientProducer(settings, database, Metrics())
            await producer.start()
            up, _ = await sequential(producer, settings, n)
            up_rate = await concurrent(producer, settings, n * 5)
            raw_up = await asyncio.to_thread(raw_kafka_latencies, settings, n)
            await asyncio.to_thread(kafka, "stop")
            try:
                warmup, warm_paths = await sequential(producer, settings, 5)
                down, paths = await sequential(producer, settings, n)
                down_rate = await concurrent(producer, settings, n * 5)
                raw_down = await raw_insert_latencies(database, n)
            finally:
                await asyncio.to_thread(kafka, "start")
                await producer.stop()
    finally:
        await drop(settings)
    result: dict[str, Any] = {
        "workload": f"200 B records, 50 keys; {n} sequential sends, {n * 5} in waves of 200",
        "broker_up": {
            "p50_ms": percentile(up, 50),
            "p99_ms": percentile(up, 99),
            "throughput_per_s": up_rate,
        },
        "broker_up_raw_confluent": {
            "p50_ms": percentile(raw_up, 50),
            "p99_ms": percentile(raw_up, 99),
        },
        "broker_down": {
            "p50_ms": percentile(down, 50),
            "p99_ms": percentile(down, 99),
            "throughput_per_s": down_rate,
            "paths": paths,
            "first_sends_ms": warmup,
            "first_paths": warm_paths,
        },
        "broker_down_raw_insert": {
            "p50_ms": percentile(raw_down, 50),
            "p99_ms": percentile(raw_down, 99),
        },
    }
    b, r, d, i = (
        result[k]
        for k in ("broker_up", "broker_up_raw_confluent", "broker_down", "broker_down_raw_insert")
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
    print(
        f"first sends after the broker stopped (before the circuit opens): "
        f"{', '.join(f'{v:.0f}' for v in warmup)} ms"
    )
    write_result("producer_latency", result)
    return result
