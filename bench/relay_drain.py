"""Relay drain rate for an outbox backlog, against two baselines measured in the same run.

* relay: ``OutboxRelay.drain`` (transactions of ``relay_batch_size`` rows + ledger,
  batch k+1 claimed while k commits) with 1, 2 and 4 outbox shards, every shard drained
  concurrently by this one process (its own transactional producer per shard);
* baseline A: confluent-kafka producing the same records directly (idempotent, acks=all);
* baseline B: a naive relay publishing one row per Kafka transaction.

The goal (issue 17): per shard at least 0.5x the raw producer; the aggregate growing
with the shards up to the cores.
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


SHARDS = (1, 2, 4)


async def relay_rate(rows: int, batch: int, shards: int = 1) -> float:
    settings = await isolated_settings(relay_batch_size=batch, outbox_shards=shards)
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
    batch = Settings.load().relay_batch_size  # the deployment's
    relay: dict[int, list[float]] = {n: [] for n in SHARDS}
    direct, naive = [], []
    for _ in range(repeats):
        settings = await isolated_settings()
        try:
            direct.append(await asyncio.to_thread(direct_rate, settings, rows))
        finally:
            await drop(settings)
        for shards in SHARDS:
            relay[shards].append(await relay_rate(rows, batch, shards))
        naive.append(await naive_rate(naive_rows))
    result: dict[str, Any] = {
        "workload": f"{rows} rows of 200 B, 100 keys, batch {batch} (SA01_RELAY_BATCH_SIZE);"
        f" naive: {naive_rows} rows",
        "relay_rows_per_s": summary(relay[1]),
        **{f"relay_{n}_shards_rows_per_s": summary(relay[n]) for n in SHARDS},
        "direct_producer_msgs_per_s": summary(direct),
        "naive_relay_rows_per_s": summary(naive),
    }
    d = result["direct_producer_msgs_per_s"]["median"]
    n = result["naive_relay_rows_per_s"]["median"]
    lines = [("relay drain", "rows/s (median)", "min-max", "vs raw", "per shard vs raw")]
    for shards in SHARDS:
        r = result[f"relay_{shards}_shards_rows_per_s"]["median"]
        lines.append(
            (
                f"relay, {shards} shard{'s' if shards > 1 else ''} (batch {batch})",
                f"{r:,.0f}",
                f"{min(relay[shards]):,.0f}-{max(relay[shards]):,.0f}",
                f"{r / d:.2f}",
                f"{r / shards / d:.2f}",
            )
        )
    lines.append(
        (
            "raw confluent producer",
            f"{d:,.0f}",
            f"{min(direct):,.0f}-{max(direct):,.0f}",
            "1.00",
            "",
        )
    )
    lines.append(
        (
            "naive relay (1 row/txn)",
            f"{n:,.0f}",
            f"{min(naive):,.0f}-{max(naive):,.0f}",
            f"{n / d:.3f}",
            "",
        )
    )
    print(table(lines))
    print(f"workload: {result['workload']}")
    write_result("relay_drain", result)
    return result
