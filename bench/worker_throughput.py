"""Worker throughput and end-to-end latency, conversation.inbound to conversation.outbound.

Targets, each a real process on its own topics:

* the worker (``faust -A streams worker -l info``) with the echo responder, and with
  litellm against the loopback OpenAI server at zero delay (its own process); replies
  go through the outbox and the standalone relay (``faust -A streams publish-outbox``);
* baseline: a bare aiokafka consume-and-produce loop (``bench.bare_loop``);
* the peer (Quix Streams, exactly-once), the EOS shape prototype (``bench.eos_shape``)
  and a bare Faust agent echoing raw bytes (``bench.faust_echo``, at-least-once and
  exactly-once): the floor of the framework the worker is built on.

Throughput: a burst of messages sent at once, from the first send to the last reply
seen by a read_committed consumer, repeated. Latency: every target at one fixed offered
load, half the slowest worker's median throughput. During the bursts each target's CPU
time per message (``/proc``; less sensitive to the other load of a shared machine than
the rates) and the worker's messages per PostgreSQL transaction (``outbox_commit_batch_size``,
group commit) are read too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import load
from bench.common import drop, percentile, summary, table, write_result
from bench.procs import FaustProc, Proc, machine_cpu_seconds, settings_env
from bench.stack import bare_loop, bench_settings, llm_server, route, with_llm, workers_deployment
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
    cpu_ms_per_message: float | None = None
    messages_per_commit: float | None = None
    machine_cpu_ms: dict[str, float] | None = None
    """CPU ms per message during the bursts by process role (``procs.PROCESS_ROLES``)."""

    @property
    def median_rate(self) -> float:
        """Median messages/s."""
        return summary(self.rates)["median"]


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commits(worker: FaustProc) -> tuple[float, float]:
    """(transactions, messages) of the worker's group commits so far."""
    text = worker.get("/metrics").text
    found = [
        re.search(rf"^outbox_commit_batch_size_{part} ([0-9.e+]+)$", text, re.M)
        for part in ("count", "sum")
    ]
    count, total = (float(m.group(1)) if m else 0.0 for m in found)
    return count, total


#: The bare Faust echo agent's kinds and their ``processing_guarantee``.
FAUST_KINDS = {"faust": "at_least_once", "faust-eos": "exactly_once"}

#: The peer row's interpreter: ``make peers`` builds its virtualenv (quixstreams).
PEER_PYTHON = Path(__file__).resolve().parents[1] / ".cache" / "peers-venv" / "bin" / "python"


@contextlib.contextmanager
def _echo_process(
    settings: Settings, name: str, command: list[str], env: dict[str, str]
) -> Iterator[Proc]:
    """``command ROUTE... GROUP`` (an echo app on the deployment's topics, its own group),
    once it says ``ready``; stopped on exit."""
    r = route(settings)
    group = f"{name}-{uuid.uuid4().hex}"
    proc = Proc(name, [*command, r.bootstrap, r.inbound, r.outbound, group], env, watch_stdout=True)
    try:
        proc.wait_ready_line()
        yield proc
    finally:
        proc.stop()


def _quix(settings: Settings) -> contextlib.AbstractContextManager[Proc]:
    """The Quix Streams peer, in its own virtualenv."""
    command = [str(PEER_PYTHON), "bench/peers/quix_echo.py"]
    return _echo_process(settings, "quix-peer", command, dict(os.environ))


def _eos(settings: Settings) -> contextlib.AbstractContextManager[Proc]:
    """``bench.eos_shape`` on the deployment's topics and database (issue 17's EOS shape)."""
    command = [sys.executable, "-m", "bench.eos_shape"]
    return _echo_process(settings, "eos-shape", command, {**os.environ, **settings_env(settings)})


def _faust(settings: Settings, guarantee: str) -> contextlib.AbstractContextManager[Proc]:
    """``bench.faust_echo``: a bare Faust echo agent (the framework's own floor)."""
    command = [sys.executable, "-m", "bench.faust_echo", guarantee]
    return _echo_process(settings, f"faust-echo-{guarantee}", command, dict(os.environ))


@contextlib.contextmanager
def _target(
    settings: Settings, kind: str, api_base: str
) -> Iterator[tuple[list[FaustProc], list[Proc]]]:
    """The bare loop (no workers, its process) or a worker deployment (its workers twice)."""
    if kind == "bare":
        with bare_loop(settings) as bare:
            yield [], [bare]
    elif kind == "quix":
        with _quix(settings) as peer:
            yield [], [peer]
    elif kind == "eos":
        with _eos(settings) as eos:
            yield [], [eos]
    elif kind in FAUST_KINDS:
        with _faust(settings, FAUST_KINDS[kind]) as agent:
            yield [], [agent]
    else:
        chosen = with_llm(settings, api_base) if kind == "litellm" else settings
        count = 2 if kind == "echo-2-workers" else 1
        with workers_deployment(chosen, count, standalone_relay=kind != "echo-own-relay") as (
            _relay,
            workers,
        ):
            yield workers, list(workers)


def measure(
    settings: Settings, kind: str, plan: Plan, rate: float | None, api_base: str = ""
) -> tuple[Figures, float]:
    """Throughput of ``kind`` (bare, echo, echo-2-workers, echo-own-relay, litellm), then
    latency at ``rate`` (or half the throughput just measured); the figures and the rate
    used. CPU, log bytes and commits are summed over the workers."""
    r = route(settings)
    size = plan.messages * (BARE_FACTOR if kind in ("bare", "quix", "eos", *FAUST_KINDS) else 1)
    with _target(settings, kind, api_base) as (workers, procs), load.ReplyWatcher(r) as watcher:
        prod = load.producer(r.bootstrap)
        load.round_trip(r, prod, watcher, load.messages(WARMUP, tag="warm"), 180)
        log_start = sum(w.log_path.stat().st_size for w in workers)
        cpu_start = sum(_cpu_seconds(p.pid) for p in procs)
        machine_start = machine_cpu_seconds()
        commits_start = [_commits(w) for w in workers]
        rates = []
        for _ in range(plan.repeats):
            rates.append(size / load.round_trip(r, prod, watcher, load.messages(size), 600))
        sent = size * plan.repeats
        machine_end = machine_cpu_seconds()
        machine = {
            role: 1000 * (seconds - machine_start.get(role, 0.0)) / sent
            for role, seconds in machine_end.items()
        }
        log_bytes = None
        per_commit = None
        if workers:
            log_bytes = (sum(w.log_path.stat().st_size for w in workers) - log_start) / sent
            ends = [_commits(w) for w in workers]
            count = sum(end[0] - start[0] for start, end in zip(commits_start, ends, strict=True))
            total = sum(end[1] - start[1] for start, end in zip(commits_start, ends, strict=True))
            per_commit = total / count if count else None
        cpu_ms = 1000 * (sum(_cpu_seconds(p.pid) for p in procs) - cpu_start) / sent
        offered = rate if rate is not None else summary(rates)["median"] / 2
        batch = load.messages(max(50, round(offered * plan.latency_seconds)), tag="lat")
        latencies = load.paced(r, prod, watcher, batch, offered, 300)
        figures = Figures(
            size, rates, latencies, watcher.duplicates, log_bytes, cpu_ms, per_commit, machine
        )
        return figures, offered


async def _one(kind: str, plan: Plan, rate: float | None, api_base: str) -> tuple[Figures, float]:
    settings = await bench_settings()
    try:
        return await asyncio.to_thread(measure, settings, kind, plan, rate, api_base)
    finally:
        await drop(settings)


#: The roles of the machine table, in its column order (``procs.PROCESS_ROLES``).
MACHINE_ROLES = ("target", "relay", "broker", "postgresql", "redis")


def _machine_row(label: str, f: Figures) -> tuple[str, ...]:
    """CPU ms per message of each role, their total, and the rate the cores would allow."""
    used = f.machine_cpu_ms or {}
    total = sum(used.get(role, 0.0) for role in MACHINE_ROLES)
    cores = os.cpu_count() or 1
    ceiling = f"{cores * 1000 / total:,.0f}" if total > 0 else "-"
    return (
        label,
        *(f"{used.get(role, 0.0):.3f}" for role in MACHINE_ROLES),
        f"{total:.3f}",
        ceiling,
        f"{used.get('other', 0.0):.3f}",
    )


def _row(label: str, f: Figures, base: Figures) -> tuple[str, ...]:
    p50, p99 = percentile(f.latencies_ms, 50), percentile(f.latencies_ms, 99)
    b50 = percentile(base.latencies_ms, 50)
    log = "-" if f.log_bytes_per_message is None else f"{f.log_bytes_per_message:,.0f}"
    cpu = cpu_ratio = "-"
    if f.cpu_ms_per_message and base.cpu_ms_per_message:
        cpu = f"{f.cpu_ms_per_message:.2f}"
        cpu_ratio = f"{base.cpu_ms_per_message / f.cpu_ms_per_message:.3f}"
    per_commit = "-" if f.messages_per_commit is None else f"{f.messages_per_commit:.1f}"
    return (
        label,
        f"{f.median_rate:,.0f}",
        f"{min(f.rates):,.0f}-{max(f.rates):,.0f}",
        f"{f.median_rate / base.median_rate:.3f}",
        f"{p50:.1f}",
        f"{p99:.1f}",
        f"{p50 / b50:.1f}",
        log,
        cpu,
        cpu_ratio,
        per_commit,
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
    two, _ = await _one("echo-2-workers", plan, rate, "")
    bare, _ = await _one("bare", plan, rate, "")
    quix = await _one("quix", plan, rate, "") if PEER_PYTHON.exists() else None
    eos, _ = await _one("eos", plan, rate, "")
    faust_alo, _ = await _one("faust", plan, rate, "")
    faust_eos, _ = await _one("faust-eos", plan, rate, "")
    settings = Settings.load()
    workload = (
        f"bursts of {plan.messages} messages to each worker, {plan.messages * BARE_FACTOR} to "
        f"the bare loop, {plan.repeats} runs each after {WARMUP} warm-up; "
        f"{load.messages(1).size_bytes} B messages ({load.TEXT_CHARS}-char text), "
        f"{load.SESSIONS} sessions, {settings.topic_partitions} partitions; relay batch "
        f"{settings.relay_batch_size}, polling every {settings.relay_poll_interval_seconds}s "
        "(the standalone relay, started first as scripts/run.sh does); memory off; "
        f"latency: {rate:.1f} msgs/s offered for {plan.latency_seconds:.0f}s to every target "
        "(half the litellm worker's median); 'no standalone relay': no publish-outbox "
        "process, the worker's own relay (woken on each commit) publishes; '2 worker "
        "processes': two workers in the consumer group, CPU and commits summed over both "
        f"({os.cpu_count()} cores on this machine, shared with Kafka, PostgreSQL, the relay "
        "and the load); peer: Quix Streams 3.28.1 echo app, processing_guarantee="
        "exactly-once, commit_interval 0.1 s, as many messages as the bare loop; EOS shape "
        "prototype: replies and consumed offsets in one Kafka transaction per batch of up to "
        "500, idempotency checked and recorded in PostgreSQL per batch (bench/eos_shape.py), "
        "as many messages as the bare loop; bare Faust agent: one faust-streaming agent "
        "echoing raw bytes (bench/faust_echo.py), at-least-once and exactly-once (Faust's "
        "transactional producer), commit interval 0.1 s, as many messages as the bare loop"
    )
    result: dict[str, Any] = {"workload": workload, "offered_load_per_s": rate}
    targets = (
        ("bare_aiokafka_loop", bare),
        ("worker_echo", echo),
        ("worker_echo_own_relay", own),
        ("two_workers_echo", two),
        ("worker_litellm", llm),
        ("eos_shape_prototype", eos),
        ("faust_agent_echo_at_least_once", faust_alo),
        ("faust_agent_echo_exactly_once", faust_eos),
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
            "cpu_ms_per_message": figures.cpu_ms_per_message,
            "messages_per_commit": figures.messages_per_commit,
            "machine_cpu_ms_per_message": figures.machine_cpu_ms,
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
        "CPU ms/msg",
        "CPU vs bare",
        "msgs/txn",
    )
    print(
        table(
            [
                header,
                _row("bare aiokafka loop (baseline)", bare, bare),
                _row("worker, echo responder", echo, bare),
                _row("worker, litellm -> loopback", llm, bare),
                _row("worker, echo, no standalone relay", own, bare),
                _row("2 worker processes, echo", two, bare),
                *((_row("peer: Quix Streams echo, exactly-once", quix[0], bare),) if quix else ()),
                _row("EOS shape prototype (bench/eos_shape.py)", eos, bare),
                _row("bare Faust agent echo, at-least-once", faust_alo, bare),
                _row("bare Faust agent echo, exactly-once", faust_eos, bare),
            ]
        )
    )
    machine_header = (
        "CPU ms per message, by process",
        "target",
        "relay",
        "broker",
        "PostgreSQL",
        "Redis",
        "total",
        f"msgs/s {os.cpu_count()} cores allow",
        "other (load)",
    )
    print(
        table(
            [
                machine_header,
                _machine_row("bare aiokafka loop (baseline)", bare),
                _machine_row("worker, echo responder", echo),
                _machine_row("worker, echo, no standalone relay", own),
                _machine_row("2 worker processes, echo", two),
                *((_machine_row("peer: Quix Streams echo", quix[0]),) if quix else ()),
                _machine_row("EOS shape prototype", eos),
                _machine_row("bare Faust agent echo, at-least-once", faust_alo),
                _machine_row("bare Faust agent echo, exactly-once", faust_eos),
            ]
        )
    )
    print(
        "(every process of the machine during the bursts, /proc; 'msgs/s cores allow': the"
        " cores divided by the total, the rate at which these processes alone would fill"
        " the machine; 'other': the bench's load and reply watcher, not in the total)"
    )
    if quix is None:
        print(f"peer row skipped: {PEER_PYTHON} is missing (make peers)")
    print(f"workload: {workload}")
    write_result("worker_throughput", result)
    return result
