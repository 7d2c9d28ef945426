"""Relay drain rate for an outbox backlog, against two baselines measured in the same run.

* relay: ``OutboxRelay.drain`` (transactions of ``relay_batch_size`` rows + ledger);
* baseline A: confluent-kafka producing the same records directly (idempotent, acks=all);
* baseline B: a naive relay publishing one row per Kafka transaction.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import Producer

from bench.common import drop, isolated_settings, summary, table, write_result
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.relay import OutboxRelay

PAYLOAD = b"x" * 200


async def fill(database: Database, settings: Settings, rows: int, tag: str = "bench") -> None:
    """Insert ``rows`` pending rows with COPY (fast); idempotency keys ``TAG-N``."""
    topic = settings.topic("conversation.outbound")
    async with database.connection() as conn, conn.transaction():
        async with conn.cursor().copy(
            "COPY outbox_message (idempotency_key, topic, partition_key, payload, headers)"
            " FROM STDIN"
        ) as copy:
            for n in range(rows):
                await copy.write_row(
                    (f"{tag}-{n}", topic, f"key-{n % 100}".encode(), PAYLOAD, "{}")
                )


async def relay_rate(rows: int, batch: int) -> float:
    settings = await isolated_settings(relay_batch_size=batch)
    try:
        async with Database(settings) as database:
            await fill(database, settings, rows)
            relay = OutboxRelay(settings, database, Metrics())
            started = time.perf_counter()
            published = await relay.drain()
            elapsed = time.perf_counter() - started
        assert published == rows, (published, rows)
        return rows / elapsed
    finally:
        await drop(settings)


def direct_rate(settings: Settings, rows: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "lz4",
        }
    )
    topic = settings.topic("conversation.outbound")
    started = time.perf_counter()
    for n in range(rows):
        while True:
            try:
                producer.produce(topic, key=f"key-{n % 100}".encode(), value=PAYLOAD)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(120)
    return rows / (time.perf_counter() - started)


async def naive_rate(rows: int) -> float:
    settings = await isolated_settings(relay_batch_size=1)
    try:
        async with Database(settings) as database:
            await fill(database, settings, rows)
            relay = OutboxRelay(settings, database, Metrics())
            started = time.perf_counter()
            await relay.drain()
            return rows / (time.perf_counter() - started)
    finally:
        await drop(settings)


async def run(quick: bool) -> dict[str, Any]:
    rows = 20_000 if quick else 100_000
    naive_rows = 500 if quick else 2_000
    repeats = 1 if quick else 3
    relay, direct, naive = [], [], []
    for _ in range(repeats):
        relay.append(await relay_rate(rows, 500))
        settings = await isolated_settings()
        try:
            direct.append(await asyncio.to_thread(direct_rate, settings, rows))
        finally:
            await drop(settings)
        naive.append(await naive_rate(naive_rows))
    result: dict[str, Any] = {
        "workload": f"{rows} rows of 200 B, 100 keys, batch 500; naive: {naive_rows} rows",
        "relay_rows_per_s": summary(relay),
        "direct_producer_msgs_per_s": summary(direct),
        "naive_relay_rows_per_s": summary(naive),
    }
    r, d, n = (
        result[k]["median"]
        for k in ("relay_rows_per_s", "direct_producer_msgs_per_s", "naive_relay_rows_per_s")
    )
    print(
        table(
            [
                ("relay drain", "rows/s (median)", "min-max", "vs relay"),
                ("relay (batch 500)", f"{r:,.0f}", f"{min(relay):,.0f}-{max(relay):,.0f}", "1.00"),
                (
                    "raw confluent producer",
                    f"{d:,.0f}",
                    f"{min(direct):,.0f}-{max(direct):,.0f}",
                    f"{d / r:.2f}",
                ),
                (
                    "naive relay (1 row/txn)",
                    f"{n:,.0f}",
                    f"{min(naive):,.0f}-{max(naive):,.0f}",
                    f"{n / r:.3f}",
                ),
            ]
        )
    )
    print(f"workload: {result['workload']}")
    write_result("relay_drain", result)
    return result
