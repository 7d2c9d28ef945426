"""Worker throughput and end-to-end latency, conversation.inbound to conversation.outbound.

Targets, each a real process on its own topics:

* the worker (``faust -A streams worker -l info``) with the echo responder, and with
  litellm against the loopback OpenAI server at zero delay (its own process); replies
  go through the outbox and the standalone relay (``faust -A streams publish-outbox``);
* baseline: a bare aiokafka consume-and-produce loop (``bench.bare_loop``).

Throughput: a burst of messages sent at once, from the first send to the last reply
seen by a read_committed consumer, repeated. Latency: every target at one fixed offered
load, half the slowest worker's median throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench import load
from bench.common import drop, percentile, summary, table, write_result
from bench.procs import FaustProc, python_proc
from bench.stack import bench_settings, deployment, llm_server, route, with_llm
from sa01.core.settings import Settings

WARMUP = 50
BARE_FACTOR = 20


@dataclass(frozen=True)
class Plan:
    """The workload of one run."""

    messages: int
    repeats: int
    latency_seconds: float


@dataclass
class Figures:
    """What one target measured."""

    messages: int
    rates: list[float]
    latencies_ms: list[float]
    duplicates: int
    log_bytes_per_message: float | None

    @property
    def median_rate(self) -> float:
        """Median messages/s."""
        return summary(self.rates)["median"]


@contextlib.contextmanager
def _bare(settings: Settings) -> Iterator[None]:
    r = route(settings)
    proc = python_proc(
        "bare-loop",
        ["-m", "bench.bare_loop", r.bootstrap, r.inbound, r.outbound, f"bare-{uuid.uuid4().hex}"],
    )
    try:
        proc.wait_ready_line()
        yield
    finally:
        proc.stop()


@contextlib.contextmanager
def _target(settings: Settings, kind: str, api_base: str) -> Iterator[FaustProc | None]:
    """The bare loop (yields None) or a worker deployment (yields the worker)."""
    if kind == "bare":
        with _bare(settings):
            yield None
    else:
        chosen = with_llm(settings, api_base) if kind == "litellm" else settings
        with deployment(chosen, standalone_relay=kind != "echo-own-relay") as (_relay, worker):
            yield worker


def measure(
    settings: Settings, kind: str, plan: Plan, rate: float | None, api_base: str = ""
) -> tuple[Figures, float]:
    """Throughput of ``kind`` (bare, echo, echo-own-relay, litellm), then latency at
    ``rate`` (or half the throughput just measured); the figures and the rate used."""
    r = route(settings)
    size = plan.messages * (BARE_FACTOR if kind == "bare" else 1)
    with _target(settings, kind, api_base) as worker, load.ReplyWatcher(r) as watcher:
        prod = load.producer(r.bootstrap)
        load.round_trip(r, prod, watcher, load.messages(WARMUP, tag="warm"), 180)
        log_start = worker.log_path.stat().st_size if worker else 0
        rates = []
        for _ in range(plan.repeats):
            rates.append(size / load.round_trip(r, prod, watcher, load.messages(size), 600))
        sent = size * plan.repeats
        log_bytes = (worker.log_path.stat().st_size - log_start) / sent if worker else None
        offered = rate if rate is not None else summary(rates)["median"] / 2
        batch = load.messages(max(50, round(offered * plan.latency_seconds)), tag="lat")
        latencies = load.paced(r, prod, watcher, batch, offered, 300)
        figures = Figures(size, rates, latencies, watcher.duplicates, log_bytes)
        return figures, offered


async def _one(kind: str, plan: Plan, rate: float | None, api_base: str) -> tuple[Figures, float]:
    settings = await bench_settings()
    try:
        return await asyncio.to_thread(measure, settings, kind, plan, rate, api_base)
    finally:
        await drop(settings)


def _row(label: str, f: Figures, base: Figures) -> tuple[str, ...]:
    p50, p99 = percentile(f.latencies_ms, 50), percentile(f.latencies_ms, 99)
    b50 = percentile(base.latencies_ms, 50)
    log = "-" if f.log_bytes_per_message is None else f"{f.log_bytes_per_message:,.0f}"
    return (
        label,
        f"{f.median_rate:,.0f}",
        f"{min(f.rates):,.0f}-{max(f.rates):,.0f}",
        f"{f.median_rate / base.median_rate:.3f}",
        f"{p50:.1f}",
        f"{p99:.1f}",
        f"{p50 / b50:.1f}",
        log,
    )


async def run(quick: bool) -> dict[str, Any]:
    """Measure the three targets; print the table; write ``worker_throughput.json``."""
    plan = Plan(
        messages=400 if quick else 3000,
        repeats=2 if quick else 5,
        latency_seconds=5.0 if quick else 20.0,
    )
    with llm_server() as api_base:
        # The slowest target first: its half throughput is everyone's offered load.
        llm, rate = await _one("litellm", plan, None, api_base)
    echo, _ = await _one("echo", plan, rate, "")
    own, _ = await _one("echo-own-relay", plan, rate, "")
    bare, _ = await _one("bare", plan, rate, "")
    settings = Settings.load()
    workload = (
        f"bursts of {plan.messages} messages to each worker, {plan.messages * BARE_FACTOR} to "
        f"the bare loop, {plan.repeats} runs each after {WARMUP} warm-up; "
        f"{load.messages(1).size_bytes} B messages ({load.TEXT_CHARS}-char text), "
        f"{load.SESSIONS} sessions, {settings.topic_partitions} partitions; relay batch "
        f"{settings.relay_batch_size}, polling every {settings.relay_poll_interval_seconds}s "
        "(the standalone relay, started first as scripts/run.sh does); memory off; "
        f"latency: {rate:.1f} msgs/s offered for {plan.latency_seconds:.0f}s to every target "
        "(half the litellm worker's median); last row: no publish-outbox process, the "
        "worker's own relay (woken on each commit) publishes"
    )
    result: dict[str, Any] = {"workload": workload, "offered_load_per_s": rate}
    targets = (
        ("bare_aiokafka_loop", bare),
        ("worker_echo", echo),
        ("worker_echo_own_relay", own),
        ("worker_litellm", llm),
    )
    for key, figures in targets:
        result[key] = {
            "burst_messages": figures.messages,
            "msgs_per_s": summary(figures.rates),
            "latency_ms": {
                "p50": percentile(figures.latencies_ms, 50),
                "p99": percentile(figures.latencies_ms, 99),
                "count": len(figures.latencies_ms),
            },
            "duplicate_replies": figures.duplicates,
            "worker_log_bytes_per_message": figures.log_bytes_per_message,
        }
    header = (
        "target",
        "msgs/s (median)",
        "min-max",
        "vs bare",
        "p50 ms",
        "p99 ms",
        "p50 vs bare",
        "log B/msg",
    )
    print(
        table(
            [
                header,
                _row("bare aiokafka loop (baseline)", bare, bare),
                _row("worker, echo responder", echo, bare),
                _row("worker, litellm -> loopback", llm, bare),
                _row("worker, echo, no standalone relay", own, bare),
            ]
        )
    )
    print(f"workload: {workload}")
    write_result("worker_throughput", result)
    return result
