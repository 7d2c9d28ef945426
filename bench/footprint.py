"""Start-up time and memory of the worker and the relay, against bare processes.

Each run starts from a fresh schema and fresh topics (a cold start). One inbound message
waits on the topic before the process starts; then a fixed load is sent and answered.

* worker (``faust -A streams worker -l info``, echo responder, the standalone relay
  running): process start to ``/health`` ready, to the waiting message's reply, and
  peak RSS (``VmHWM`` in /proc/PID/status) after the load;
* relay (``faust -A streams publish-outbox``): start to holding the relay lock, and its
  peak RSS after publishing the worker's replies;
* baselines measured the same way: ``python -c`` importing nothing (ready = its first
  line), and the bare aiokafka consume-and-produce loop (``bench.bare_loop``: ready =
  partitions assigned), which answers the same messages.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench import load
from bench.common import drop, summary, table, write_result
from bench.procs import Proc, python_proc, start_relay, start_worker
from bench.stack import bench_settings, relay_active, route
from sa01.core.settings import Settings

BARE_PYTHON = "print('ready', flush=True); input()"


@dataclass
class Samples:
    """Per-run figures of one kind of process (seconds, KiB)."""

    ready_s: list[float] = field(default_factory=list)
    first_reply_s: list[float] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)


def _first_message(r: load.Route, watcher: load.ReplyWatcher) -> str:
    """Send one message now (before the process starts); its id."""
    batch = load.messages(1, tag="first")
    watcher.expect(batch.ids)
    prod = load.producer(r.bootstrap)
    key, value = batch.records[0]
    prod.produce(r.inbound, key=key, value=value)
    prod.flush(30)
    return batch.ids[0]


def _answer(proc: Proc, r: load.Route, watcher: load.ReplyWatcher, first: str, n: int) -> float:
    """Seconds from process start to the waiting message's reply; then the fixed load."""
    watcher.wait(180)
    first_reply = watcher.seen[first] - proc.started_at
    load.round_trip(r, load.producer(r.bootstrap), watcher, load.messages(n), 600)
    return first_reply


def worker_run(settings: Settings, n: int, worker: Samples, relay: Samples) -> None:
    """One cold start of the relay, then the worker; the load; their peaks."""
    r = route(settings)
    data_dir = tempfile.mkdtemp(prefix="sa01-bench-")
    relay_proc = start_relay(settings)
    try:
        relay.ready_s.append(relay_proc.wait_until(lambda: relay_active(relay_proc), 90, 0.02))
        with load.ReplyWatcher(r) as watcher:
            first = _first_message(r, watcher)
            worker_proc = start_worker(settings, data_dir)
            try:
                worker.ready_s.append(worker_proc.wait_health_ready())
                worker.first_reply_s.append(_answer(worker_proc, r, watcher, first, n))
                worker.peak_rss_kib.append(worker_proc.peak_rss_kib())
                relay.peak_rss_kib.append(relay_proc.peak_rss_kib())
            finally:
                worker_proc.stop()
    finally:
        relay_proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def bare_loop_run(settings: Settings, n: int, samples: Samples) -> None:
    """One cold start of the bare aiokafka loop; the same load; its peak."""
    r = route(settings)
    with load.ReplyWatcher(r) as watcher:
        first = _first_message(r, watcher)
        proc = python_proc(
            "bare-loop",
            ["-m", "bench.bare_loop", r.bootstrap, r.inbound, r.outbound, f"b-{uuid.uuid4().hex}"],
        )
        try:
            samples.ready_s.append(proc.wait_ready_line())
            samples.first_reply_s.append(_answer(proc, r, watcher, first, n))
            samples.peak_rss_kib.append(proc.peak_rss_kib())
        finally:
            proc.stop()


def bare_python_run(samples: Samples) -> None:
    """``python -c`` importing nothing: start to its first line; its peak."""
    proc = python_proc("bare-python", ["-c", BARE_PYTHON])
    try:
        samples.ready_s.append(proc.wait_ready_line())
        samples.peak_rss_kib.append(proc.peak_rss_kib())
    finally:
        proc.stop()


async def _isolated(run: Any, *args: Any) -> None:
    settings = await bench_settings()
    try:
        await asyncio.to_thread(run, settings, *args)
    finally:
        await drop(settings)


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    s = summary([v * scale for v in values])
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _ratio(values: list[float], base: list[float]) -> str:
    if not values or not base:
        return "-"
    return f"{summary(values)['median'] / summary(base)['median']:.1f}"


async def run(quick: bool) -> dict[str, Any]:
    """Measure; print the table; write ``footprint.json``."""
    repeats = 2 if quick else 5
    n = 500 if quick else 5000
    python, bare, worker, relay = Samples(), Samples(), Samples(), Samples()
    for _ in range(repeats):
        await asyncio.to_thread(bare_python_run, python)
        await _isolated(bare_loop_run, n, bare)
        await _isolated(worker_run, n, worker, relay)
    kinds = {
        "bare_python": python,
        "bare_aiokafka_loop": bare,
        "worker": worker,
        "relay": relay,
    }
    result: dict[str, Any] = {
        "workload": (
            f"{repeats} cold starts each (fresh schema and topics); one message waiting "
            f"before the start, then {n} messages of {load.messages(1).size_bytes} B over "
            f"{load.SESSIONS} sessions, {Settings.load().topic_partitions} partitions; worker: "
            "echo responder, memory off, -l info; peak RSS = VmHWM after the load"
        )
    }
    for key, s in kinds.items():
        result[key] = {
            "ready_s": summary(s.ready_s) if s.ready_s else None,
            "first_reply_s": summary(s.first_reply_s) if s.first_reply_s else None,
            "peak_rss_mib": summary([k / 1024 for k in s.peak_rss_kib]),
        }
    rows: list[tuple[str, ...]] = [
        (
            "process",
            "start->ready s",
            "start->first reply s",
            "peak RSS MiB",
            "ready / bare py",
            "ready / aiokafka",
            "RSS / bare py",
            "RSS / aiokafka",
        )
    ]
    labels = (
        ("bare python (baseline)", python, "first line"),
        ("bare aiokafka loop (baseline)", bare, "assigned"),
        ("worker", worker, "/health"),
        ("relay", relay, "lock held"),
    )
    for label, s, ready in labels:
        rss = [float(k) for k in s.peak_rss_kib]
        rss_python = [float(k) for k in python.peak_rss_kib]
        rss_bare = [float(k) for k in bare.peak_rss_kib]
        rows.append(
            (
                f"{label} [{ready}]",
                _fmt(s.ready_s),
                _fmt(s.first_reply_s),
                _fmt(rss, 1 / 1024, 0),
                _ratio(s.ready_s, python.ready_s),
                _ratio(s.ready_s, bare.ready_s),
                _ratio(rss, rss_python),
                _ratio(rss, rss_bare),
            )
        )
    print(table(rows))
    print("median (min-max); ready = the signal in brackets")
    print(f"workload: {result['workload']}")
    write_result("footprint", result)
    return result
