"""How the relay should be woken: LISTEN/NOTIFY or polling (the contract asks to measure).

PostgreSQL's ``NOTIFY`` takes a global lock at commit, which serializes the commits of
concurrent writers. The bench runs ``writers`` connections, each committing outbox
inserts one transaction at a time, twice: plain inserts (the relay polls, and writers in
the worker wake it in-process), and inserts followed by ``pg_notify`` in the same
transaction (a LISTENing relay would wake at once). It reports commits/s of each, and
the wake-up latency of each: a LISTEN connection's delay from commit to notification,
against polling's expected delay (half the poll interval).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from bench.common import drop, isolated_settings, percentile, summary, table, write_result
from sa01.core.settings import Settings

CHANNEL = "sa01_outbox"
PAYLOAD = b"x" * 200


async def _writer(settings: Settings, name: str, count: int, notify: bool) -> None:
    conn = await psycopg.AsyncConnection.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    )
    async with conn:
        for n in range(count):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO outbox_message"
                    " (idempotency_key, topic, partition_key, payload, headers, max_attempts)"
                    " VALUES (%s, 'bench', %s, %s, '{}', 10)",
                    (f"{name}-{n}", name.encode(), PAYLOAD),
                )
                if notify:
                    await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))


async def commit_rate(writers: int, per_writer: int, notify: bool) -> float:
    """Commits/s of ``writers`` concurrent connections."""
    settings = await isolated_settings()
    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(_writer(settings, f"w{i}", per_writer, notify) for i in range(writers))
        )
        return writers * per_writer / (time.perf_counter() - started)
    finally:
        await drop(settings)


async def notify_latency(samples: int) -> list[float]:
    """Milliseconds from a NOTIFY's commit to its delivery on a LISTEN connection."""
    settings = await isolated_settings()
    try:
        listener = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
        sender = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
        async with listener, sender:
            arrived = asyncio.Event()
            listener.add_notify_handler(lambda _notify: arrived.set())
            await listener.execute(f"LISTEN {CHANNEL}")
            delays: list[float] = []
            for _ in range(samples):
                arrived.clear()
                sent = time.perf_counter()
                await sender.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
                # Handlers run while the connection reads; a cheap query makes it read.
                while not arrived.is_set():
                    await listener.execute("SELECT 1")
                delays.append((time.perf_counter() - sent) * 1000)
            return delays
    finally:
        await drop(settings)


async def run(quick: bool) -> dict[str, Any]:
    """Commits/s with and without NOTIFY for 1, 8 and 32 writers; wake-up latency."""
    per_writer = 100 if quick else 400
    repeats = 1 if quick else 3
    counts = (1, 8, 32)
    rows: list[tuple[str, ...]] = [
        ("writers", "polling commits/s", "NOTIFY commits/s", "NOTIFY / polling")
    ]
    result: dict[str, Any] = {
        "workload": f"each writer commits {per_writer} single-row outbox inserts of 200 B",
        "writers": {},
    }
    for writers in counts:
        plain = [await commit_rate(writers, per_writer, False) for _ in range(repeats)]
        notified = [await commit_rate(writers, per_writer, True) for _ in range(repeats)]
        p, n = summary(plain)["median"], summary(notified)["median"]
        result["writers"][str(writers)] = {
            "polling_commits_per_s": summary(plain),
            "notify_commits_per_s": summary(notified),
            "ratio": n / p,
        }
        rows.append((str(writers), f"{p:,.0f}", f"{n:,.0f}", f"{n / p:.2f}"))
    delays = await notify_latency(200 if quick else 1000)
    settings = Settings.load()
    result["notify_wakeup_ms"] = {"p50": percentile(delays, 50), "p99": percentile(delays, 99)}
    result["polling_wakeup_ms_expected"] = settings.relay_poll_interval_seconds * 1000 / 2
    print(table(rows))
    print(
        f"wake-up: NOTIFY p50 {result['notify_wakeup_ms']['p50']:.2f} ms,"
        f" p99 {result['notify_wakeup_ms']['p99']:.2f} ms; polling every"
        f" {settings.relay_poll_interval_seconds:.1f} s waits"
        f" {result['polling_wakeup_ms_expected']:.0f} ms on average (writers in the worker"
        " wake their own relay at once)"
    )
    print(f"workload: {result['workload']}")
    write_result("notify_wakeup", result)
    return result
