"""Draining a memory backlog written in transactions, and reply latency meanwhile (issue 13).

Each deployment of ``DEPLOYMENTS`` (one worker of role ``all``; a ``replies`` worker
beside a ``background`` worker) runs twice, each time as relay then workers, echo
responder, memory on against a fresh loopback SomaBrain in its own process, answering
at once:

* without a backlog: the conversation path's own rate (bursts of messages) and the
  p50/p99 reply latency of a fixed 20 msgs/s load;
* with a backlog: ``MemoryRecord``s written to ``somabrain.memory.remember`` before
  the workers start, in transactions of 10 over 100 (tenant, agent) pairs (a control
  record, an offset gap, after each transaction's records on every partition), as the
  transactional relay writes them. The drain is timed from the workers' ``/health``
  ready to the last memory of the backlog's tenants stored in SomaBrain (records/s;
  replies are remembered too, under their own tenant, and do not count); after 50
  warm-up messages (as without a backlog) the same 20 msgs/s load runs meanwhile, and
  only replies to messages sent before the drain ended count.

The drain is capped (``DRAIN_CAP_SECONDS``); a drain that does not finish reports the
memories stored and its rate so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer

from bench import load
from bench.common import drop, percentile, summary, table, write_result
from bench.procs import free_port, machine_cpu_seconds, python_proc
from bench.stack import bench_settings, route, workers_deployment
from sa01.core.settings import Settings
from schemas.codec import encode_message
from schemas.messages import MemoryRecord

RATE = 20.0
PAIRS = 100
PER_TRANSACTION = 10
DRAIN_CAP_SECONDS = 600.0
QUICK_DRAIN_CAP_SECONDS = 180.0
#: The deployments measured: one worker of every role, and a worker answering replies
#: beside one draining background work (SA01_WORKER_ROLE), in one consumer group.
Roles = tuple[str, ...]
DEPLOYMENTS: dict[str, Roles] = {
    "one worker": ("all",),
    "replies worker + background worker": ("replies", "background"),
}
#: The backlog's tenants (``tenant-{n % PAIRS // 10}``, ten agents each).
BACKLOG_TENANTS = tuple(f"tenant-{t}" for t in range(PAIRS // 10))


@contextlib.contextmanager
def somabrain_server() -> Iterator[str]:
    """``python -m loopback.somabrain_server`` in its own process; its base URL."""
    port = free_port(26900)
    proc = python_proc(
        "somabrain",
        ["-m", "loopback.somabrain_server", "--port", str(port), "--log-level", "WARNING"],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_until(lambda: _stored(url) is not None, 30, 0.1)
        yield url
    finally:
        proc.stop()


def _stored(url: str) -> int | None:
    """Memories of the backlog's tenants in the loopback (replies are remembered too, under
    the conversation's own tenant: they are not part of the drain)."""
    try:
        by_tenant = httpx.get(f"{url}/_loopback/mode", timeout=2.0).json()["memories_by_tenant"]
        return sum(int(by_tenant.get(tenant, 0)) for tenant in BACKLOG_TENANTS)
    except (httpx.HTTPError, KeyError, ValueError, AttributeError):
        return None


def _stored_now(url: str, timeout: float = 60.0) -> int:
    """The loopback's count of memories, asked until it answers (it may be busy)."""
    deadline = time.monotonic() + timeout
    while True:
        stored = _stored(url)
        if stored is not None:
            return stored
        if time.monotonic() > deadline:
            raise RuntimeError(f"the loopback SomaBrain at {url} did not answer in {timeout:.0f}s")
        time.sleep(0.5)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_backlog(settings: Settings, count: int) -> float:
    """``count`` memories in transactions of ``PER_TRANSACTION``; seconds taken."""
    started = time.perf_counter()
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "transactional.id": f"bench-backlog-{uuid.uuid4().hex}",
            "linger.ms": 5,
            "log_level": 3,
        }
    )
    producer.init_transactions(30)
    topic = settings.topic("somabrain.memory.remember")
    for start in range(0, count, PER_TRANSACTION):
        producer.begin_transaction()
        for n in range(start, min(count, start + PER_TRANSACTION)):
            record = MemoryRecord(
                memory_id=f"bench-{n:06d}",
                tenant_id=f"tenant-{n % PAIRS // 10}",
                agent_id=f"agent-{n % 10}",
                session_id="s1",
                content=f"memory {n} " + "x" * 80,
            )
            producer.produce(topic, key=record.partition_key.encode(), value=encode_message(record))
        producer.commit_transaction(60)
    return time.perf_counter() - started


def _settings_for(url: str) -> dict[str, Any]:
    return {
        "memory_enabled": True,
        "somabrain_url": url,
        "health_probes": "postgres,kafka,redis,somabrain",
    }


def without_backlog(
    settings: Settings, roles: Roles, bursts: int, size: int, seconds: float
) -> dict[str, Any]:
    """The conversation path alone: burst rates, then latency at ``RATE``."""
    r = route(settings)
    with workers_deployment(settings, len(roles), roles=roles), load.ReplyWatcher(r) as watcher:
        prod = load.producer(r.bootstrap)
        load.round_trip(r, prod, watcher, load.messages(50, tag="warm"), 180)
        rates = [
            size / load.round_trip(r, prod, watcher, load.messages(size), 600)
            for _ in range(bursts)
        ]
        latencies = load.paced(
            r, prod, watcher, load.messages(round(RATE * seconds), tag="lat"), RATE, 300
        )
    return {"rates": rates, "latencies": latencies}


def with_backlog(
    settings: Settings, roles: Roles, url: str, count: int, cap: float
) -> dict[str, Any]:
    """Drain ``count`` memories while ``RATE`` msgs/s of conversation run."""
    written = write_backlog(settings, count)
    r = route(settings)
    with (
        workers_deployment(settings, len(roles), roles=roles) as (_, workers),
        load.ReplyWatcher(r) as watcher,
    ):
        drain_started = time.perf_counter()
        cpu_started = sum(cpu_seconds(worker.pid) for worker in workers)
        machine_started = machine_cpu_seconds()
        load_average = os.getloadavg()[0]
        before = _stored_now(url)
        prod = load.producer(r.bootstrap)
        # As without a backlog: the first replies (partition assignment) are not counted.
        load.round_trip(r, prod, watcher, load.messages(50, tag="warm"), 180)
        started = time.perf_counter()
        batch = load.messages(round(RATE * cap), tag="drain")
        sent_at: dict[str, float] = {}
        drained_at: list[float] = []

        progress: list[tuple[float, int]] = []  # (time, memories of the backlog stored)

        def watch_drain() -> None:
            while time.perf_counter() - drain_started < cap:
                stored_now = _stored(url)
                if stored_now is not None:
                    progress.append((time.perf_counter(), stored_now - before))
                if (stored_now or 0) >= count:
                    drained_at.append(time.perf_counter())
                    return
                time.sleep(0.1)

        drain = threading.Thread(target=watch_drain, daemon=True)
        drain.start()
        watcher.expect(batch.ids)
        for n, (message_id, (key, value)) in enumerate(zip(batch.ids, batch.records, strict=True)):
            delay = started + n / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if drained_at:
                break
            sent_at[message_id] = time.perf_counter()
            prod.produce(r.inbound, key=key, value=value)
            prod.poll(0)
        prod.flush(60)
        drain.join(cap + 10)
        end = drained_at[0] if drained_at else time.perf_counter()
        stored = _stored_now(url)
        cpu = sum(cpu_seconds(worker.pid) for worker in workers) - cpu_started
        machine_ended = machine_cpu_seconds()
        # Share of one core each role used while the backlog drained.
        machine = {
            role: 100 * (seconds - machine_started.get(role, 0.0)) / (end - drain_started)
            for role, seconds in machine_ended.items()
        }
        deadline = time.monotonic() + 300
        while any(i not in watcher.seen for i in sent_at) and time.monotonic() < deadline:
            time.sleep(0.1)
        latencies = [(watcher.seen[i] - t) * 1000 for i, t in sent_at.items() if i in watcher.seen]
        # The slowest replies, with when they were sent (seconds into the drain's load):
        # a p99 made of a few replies at the start is not the one made of a steady tail.
        slowest = sorted(
            (
                (round((watcher.seen[i] - t) * 1000, 1), round(t - started, 2))
                for i, t in sent_at.items()
                if i in watcher.seen
            ),
            reverse=True,
        )[:10]
    return {
        # Memories stored while the group settled (before ``before`` was read) are not
        # part of the measured drain: the shares are of what was left.
        "steady_records_per_s": steady_rate(progress, count - before),
        "slowest_ms_and_sent_at_s": slowest,
        "written_seconds": written,
        "drain_seconds": end - drain_started,
        "stored": stored - before,
        "finished": bool(drained_at),
        "latencies": latencies,
        "unanswered": len(sent_at) - len(latencies),
        "worker_cpu_seconds": cpu,
        "load_average": load_average,
        "machine_core_percent": machine,
    }


def steady_rate(progress: list[tuple[float, int]], count: int) -> float | None:
    """Records/s from 20% to 80% of the backlog stored: the drain once under way, without
    the workers' start (joining the group, the first fetches), which the whole drain's
    rate includes. None when the drain did not get to 80%."""

    def reached(share: float) -> float | None:
        return next((t for t, stored in progress if stored >= share * count), None)

    start, end = reached(0.2), reached(0.8)
    if start is None or end is None or end <= start:
        return None
    return 0.6 * count / (end - start)


def _rows(name: str, alone: dict[str, Any], drained: dict[str, Any]) -> list[tuple[str, ...]]:
    conversation_rate = summary(alone["rates"])["median"]
    drain_rate = drained["stored"] / drained["drain_seconds"]
    p50_alone, p99_alone = percentile(alone["latencies"], 50), percentile(alone["latencies"], 99)
    lat = drained["latencies"] or [float("nan")]
    p50_drain, p99_drain = percentile(lat, 50), percentile(lat, 99)
    status = "" if drained["finished"] else " (not finished)"
    cpu_per_memory = drained["worker_cpu_seconds"] * 1000 / max(1, drained["stored"])
    steady = drained["steady_records_per_s"]
    return [
        (f"{name}:", "", "", ""),
        (
            f"  memory drain, records/s{status}",
            f"{drain_rate:,.0f}",
            f"conversation alone {conversation_rate:,.0f} msgs/s",
            f"{drain_rate / conversation_rate:.2f}",
        ),
        (
            "  memory drain once under way (20% to 80%), records/s",
            f"{steady:,.0f}" if steady is not None else "-",
            f"conversation alone {conversation_rate:,.0f} msgs/s",
            f"{steady / conversation_rate:.2f}" if steady is not None else "",
        ),
        (
            "  memories stored / drain seconds",
            f"{drained['stored']:,} / {drained['drain_seconds']:.1f}",
            "",
            "",
        ),
        (
            f"  reply p50 ms at {RATE:.0f} msgs/s",
            f"{p50_drain:.1f} (during the drain)",
            f"{p50_alone:.1f} (no backlog)",
            f"{p50_drain / p50_alone:.1f}",
        ),
        (
            f"  reply p99 ms at {RATE:.0f} msgs/s",
            f"{p99_drain:.1f} (during the drain)",
            f"{p99_alone:.1f} (no backlog)",
            f"{p99_drain / p99_alone:.1f}",
        ),
        (
            "  workers' CPU ms per memory stored (replies included)",
            f"{cpu_per_memory:.2f}",
            f"load average {drained['load_average']:.1f} at the drain's start",
            "",
        ),
        (
            "  % of a core during the drain, by process",
            _core_shares(drained["machine_core_percent"]),
            "",
            "",
        ),
        (
            "  replies during the drain (unanswered)",
            f"{len(drained['latencies'])} ({drained['unanswered']})",
            f"{len(alone['latencies'])}",
            "",
        ),
    ]


def _core_shares(percent: dict[str, float]) -> str:
    """``target 64, somabrain 31, ...``: the roles' shares of a core, largest first
    (workers are ``target``; ``other`` is the bench's own load and watcher)."""
    ranked = sorted(percent.items(), key=lambda item: -item[1])
    names = {"target": "workers", "other": "other (load)"}
    return ", ".join(f"{names.get(role, role)} {share:.0f}" for role, share in ranked)


def _result(alone: dict[str, Any], drained: dict[str, Any]) -> dict[str, Any]:
    lat = drained["latencies"] or [float("nan")]
    return {
        "drain": {
            "records_per_s": drained["stored"] / drained["drain_seconds"],
            "steady_records_per_s": drained["steady_records_per_s"],
            "seconds": drained["drain_seconds"],
            "stored": drained["stored"],
            "finished": drained["finished"],
            "written_seconds": drained["written_seconds"],
            "worker_cpu_ms_per_memory": drained["worker_cpu_seconds"]
            * 1000
            / max(1, drained["stored"]),
            "load_average": drained["load_average"],
            "machine_core_percent": drained["machine_core_percent"],
        },
        "conversation_msgs_per_s": summary(alone["rates"]),
        "latency_ms_without_backlog": {
            "p50": percentile(alone["latencies"], 50),
            "p99": percentile(alone["latencies"], 99),
            "count": len(alone["latencies"]),
        },
        "latency_ms_during_drain": {
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "count": len(drained["latencies"]),
            "unanswered": drained["unanswered"],
            "slowest_ms_and_sent_at_s": drained["slowest_ms_and_sent_at_s"],
        },
    }


async def run(quick: bool) -> dict[str, Any]:
    """Measure each deployment of ``DEPLOYMENTS``; print the table; write
    ``memory_backlog.json``."""
    count = 10_000 if quick else 50_000
    bursts, size, seconds = (2, 400, 15.0) if quick else (3, 2000, 30.0)
    cap = QUICK_DRAIN_CAP_SECONDS if quick else DRAIN_CAP_SECONDS
    rows: list[tuple[str, ...]] = [("measure", "value", "baseline (same run)", "ratio")]
    results: dict[str, Any] = {}
    partitions = 0
    for name, roles in DEPLOYMENTS.items():
        # A fresh SomaBrain each: the backlog's memory ids are the same in every run.
        with somabrain_server() as url:
            alone_settings = await bench_settings(**_settings_for(url))
            try:
                alone = await asyncio.to_thread(
                    without_backlog, alone_settings, roles, bursts, size, seconds
                )
            finally:
                await drop(alone_settings)
            drain_settings = await bench_settings(**_settings_for(url))
            partitions = drain_settings.topic_partitions
            try:
                drained = await asyncio.to_thread(
                    with_backlog, drain_settings, roles, url, count, cap
                )
            finally:
                await drop(drain_settings)
        rows += _rows(name, alone, drained)
        results[name] = {"roles": list(roles), **_result(alone, drained)}
    workload = (
        f"{count:,} MemoryRecords written before the workers start, in transactions of "
        f"{PER_TRANSACTION} over {PAIRS} (tenant, agent) pairs ({partitions} partitions); "
        f"loopback SomaBrain in its own process answering at once; echo responder; "
        f"conversation rate: {bursts} bursts of {size} messages; latency: {RATE:.0f} msgs/s "
        f"paced ({seconds:.0f} s without a backlog, for the whole drain with one, capped at "
        f"{cap:.0f} s); each deployment measured without and with the backlog"
    )
    print(table(rows))
    print(f"workload: {workload}")
    result: dict[str, Any] = {"workload": workload, "memories": count, "deployments": results}
    write_result("memory_backlog", result)
    return result
