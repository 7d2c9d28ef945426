"""Outage detection and recovery under a real worker, and the outbox drain after a
broker outage.

For Redis, PostgreSQL and Kafka in turn: ``scripts/services.sh stop NAME``, then the time
until the worker's ``/status`` (polled every 50 ms) shows it ``unavailable``;
``scripts/services.sh start NAME``, then the time until ``healthy``. Baseline: the probe
interval configured (``SA01_HEALTH_INTERVAL_SECONDS``), reported as a ratio.

Outbox: 10,000 rows put in ``outbox_message`` (as ``bench/relay_drain.py`` does) while
the broker is down, the broker started again, then the time from its return to an empty
outbox with the standalone relay running. Baseline: the same backlog drained by the same
relay with the broker up.

It stops services: run it on a stack of your own (see bench/README.md); it refuses to
run when ``scripts/services.sh`` would act on other ports than the bench's clients use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.common import drop, summary, table, write_result
from bench.procs import FaustProc, check_controlled_stack, service
from bench.relay_drain import PAYLOAD, fill
from bench.stack import bench_settings, deployment
from sa01.core.settings import Settings
from sa01.outbox.database import Database

SERVICES = ("redis", "postgres", "kafka")
BACKLOG = 10_000
POLL = 0.05


def _state(doc: dict[str, Any], name: str) -> str | None:
    found = doc.get("services", {}).get(name, {}).get("state")
    return str(found) if found is not None else None


def _wait(worker: FaustProc, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> float:
    """Poll ``/status`` until ``predicate`` holds; the ``perf_counter`` when it did."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = worker.status()
        if last and predicate(last):
            return time.perf_counter()
        time.sleep(POLL)
    raise RuntimeError(f"/status never satisfied the condition in {timeout:.0f}s: {last}")


def _all_healthy(doc: dict[str, Any]) -> bool:
    return all(_state(doc, name) == "healthy" for name in SERVICES) and bool(
        doc.get("worker", {}).get("leader")
    )


def outage(worker: FaustProc, name: str) -> dict[str, float]:
    """Stop ``name``, time the detection; start it, time the recovery."""
    _wait(worker, _all_healthy, 120)
    issued = time.perf_counter()
    stop_took = service("stop", name)
    down = time.perf_counter()
    try:
        detected = _wait(worker, lambda d: _state(d, name) == "unavailable", 60)
    finally:
        start_took = service("start", name)
    up = time.perf_counter()
    healthy = _wait(worker, lambda d: _state(d, name) == "healthy", 120)
    return {
        "stop_took_s": stop_took,
        "detected_s": detected - down,
        "detected_from_stop_command_s": detected - issued,
        "start_took_s": start_took,
        "healthy_s": healthy - up,
    }


def _pending(settings: Settings) -> int:
    with psycopg.connect(
        settings.database_url,
        autocommit=True,
        options=f"-c search_path={settings.database_schema}",
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox_message WHERE status IN ('pending', 'publishing')"
        ).fetchone()
    return int(row[0]) if row else 0


def _fill(settings: Settings, rows: int) -> None:
    async def go() -> None:
        async with Database(settings) as database:
            await fill(database, settings, rows, tag=f"fill-{time.monotonic_ns()}")

    asyncio.run(go())


def _until_empty(settings: Settings, timeout: float = 300.0) -> tuple[float, float]:
    """Poll the backlog until it is empty; ``perf_counter`` when it first shrank and when
    it was empty."""
    deadline = time.monotonic() + timeout
    first = _pending(settings)
    shrank: float | None = None
    while True:
        pending = _pending(settings)
        now = time.perf_counter()
        if shrank is None and pending < first:
            shrank = now
        if pending == 0:
            return (now if shrank is None else shrank), now
        if time.monotonic() > deadline:
            raise RuntimeError(f"outbox not empty after {timeout:.0f}s ({pending} rows)")
        time.sleep(POLL)


def drain_with_broker_up(settings: Settings) -> dict[str, float]:
    """Seconds from a committed backlog to its first published rows and to an empty
    outbox, broker up."""
    _until_empty(settings)
    _fill(settings, BACKLOG)
    committed = time.perf_counter()
    shrank, empty = _until_empty(settings)
    return {"resumed_s": shrank - committed, "drained_s": empty - committed}


def drain_after_outage(settings: Settings, hold: float) -> dict[str, float]:
    """Stop the broker, fill the outbox, keep the broker down ``hold`` more seconds,
    start it; seconds from its return to the first published rows and to an empty outbox."""
    _until_empty(settings)
    service("stop", "kafka")
    try:
        _fill(settings, BACKLOG)
        time.sleep(hold)
    finally:
        start_took = service("start", "kafka")
    up = time.perf_counter()
    shrank, empty = _until_empty(settings)
    return {"start_took_s": start_took, "resumed_s": shrank - up, "drained_s": empty - up}


def measure(settings: Settings, repeats: int, hold: float) -> dict[str, Any]:
    """Every outage ``repeats`` times, then the drains; one worker and relay throughout."""
    outages: dict[str, list[dict[str, float]]] = {name: [] for name in SERVICES}
    drains_up: list[dict[str, float]] = []
    drains_after: list[dict[str, float]] = []
    with deployment(settings) as (_relay, worker):
        for _ in range(repeats):
            for name in SERVICES:
                outages[name].append(outage(worker, name))
        _wait(worker, _all_healthy, 120)
        for _ in range(repeats):
            drains_up.append(drain_with_broker_up(settings))
            drains_after.append(drain_after_outage(settings, hold))
    return {"outages": outages, "drains_up": drains_up, "drains_after": drains_after}


async def run(quick: bool) -> dict[str, Any]:
    """Measure; print the tables; write ``detection.json``."""
    repeats = 2 if quick else 5
    hold = 3.0 if quick else 10.0
    check_controlled_stack(Settings.load())
    settings = await bench_settings()
    try:
        raw = await asyncio.to_thread(measure, settings, repeats, hold)
    finally:
        await drop(settings)
    interval = settings.health_interval_seconds
    result: dict[str, Any] = {
        "workload": (
            f"one worker (probes {settings.health_probes}, every {interval}s, timeout "
            f"{settings.health_timeout_seconds}s) and the standalone relay; each service "
            f"stopped and started {repeats}x; /status polled every {POLL * 1000:.0f} ms; "
            f"outbox: {BACKLOG:,} rows of {len(PAYLOAD)} B, 100 keys, relay batch "
            f"{settings.relay_batch_size}, broker kept down {hold:.0f}s after the fill"
        ),
        "probe_interval_s": interval,
    }
    rows: list[tuple[str, ...]] = [
        (
            "service",
            "unavailable after (median s)",
            "min-max",
            "/ probe interval",
            "from stop issued s",
            "healthy after (median s)",
            "min-max",
            "/ probe interval",
            "stop took s",
        )
    ]
    for name in SERVICES:
        detected = [o["detected_s"] for o in raw["outages"][name]]
        healthy = [o["healthy_s"] for o in raw["outages"][name]]
        stops = [o["stop_took_s"] for o in raw["outages"][name]]
        issued = [o["detected_from_stop_command_s"] for o in raw["outages"][name]]
        d, h = summary(detected), summary(healthy)
        result[name] = {
            "unavailable_after_stop_s": d,
            "unavailable_after_stop_issued_s": summary(issued),
            "healthy_after_start_s": h,
            "stop_took_s": summary(stops),
            "runs": raw["outages"][name],
        }
        rows.append(
            (
                name,
                f"{d['median']:.2f}",
                f"{d['min']:.2f}-{d['max']:.2f}",
                f"{d['median'] / interval:.2f}",
                f"{summary(issued)['median']:.2f}",
                f"{h['median']:.2f}",
                f"{h['min']:.2f}-{h['max']:.2f}",
                f"{h['median'] / interval:.2f}",
                f"{summary(stops)['median']:.1f}",
            )
        )
    up = summary([d["drained_s"] for d in raw["drains_up"]])
    after = summary([d["drained_s"] for d in raw["drains_after"]])
    up_resumed = summary([d["resumed_s"] for d in raw["drains_up"]])
    after_resumed = summary([d["resumed_s"] for d in raw["drains_after"]])
    result["outbox_broker_up"] = {"empty_s": up, "first_rows_s": up_resumed}
    result["outbox_after_broker_return"] = {"empty_s": after, "first_rows_s": after_resumed}
    result["outbox_runs"] = {"broker_up": raw["drains_up"], "after_return": raw["drains_after"]}
    print(table(rows))
    print(
        f"baseline: the probe interval, {interval}s; detection counts from the stop "
        "command's return (service down), recovery from the start command's return "
        "(service answering)"
    )
    print()
    print(
        table(
            [
                (
                    "outbox backlog",
                    "empty after (median s)",
                    "min-max",
                    "first rows after s",
                    "rows/s",
                    "vs broker up",
                ),
                (
                    "broker up the whole time (baseline)",
                    f"{up['median']:.2f}",
                    f"{up['min']:.2f}-{up['max']:.2f}",
                    f"{up_resumed['median']:.2f}",
                    f"{BACKLOG / up['median']:,.0f}",
                    "1.00",
                ),
                (
                    "from the broker's return",
                    f"{after['median']:.2f}",
                    f"{after['min']:.2f}-{after['max']:.2f}",
                    f"{after_resumed['median']:.2f}",
                    f"{BACKLOG / after['median']:,.0f}",
                    f"{after['median'] / up['median']:.2f}",
                ),
            ]
        )
    )
    print(f"workload: {result['workload']}")
    write_result("detection", result)
    return result
