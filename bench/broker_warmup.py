"""Warm the broker's JIT before anything is measured.

A broker that has just started compiles its hot paths while the first benches run: on
this 2-core machine its compiler threads took 3.7 s of the broker's 6.2 s of CPU during
the first 12,000 replies of the echo worker, and the same worker answered about twice as
fast once they were done. Whichever row ran first (often the bare loop, the baseline of
every ratio) was measured on a slower broker than the rows after it.

:func:`warm` runs the benches' kinds of Kafka traffic in rounds on a throw-away
deployments (their own topics and schemas): a burst through the bare consume-and-reply
loop (fetch, idempotent produce, group commits), records written in transactions of 10
(as the relay writes them) read back by a read_committed consumer, and a burst through
the echo worker and its relay (Faust's consumer, the relay's transactions). It stops
once the broker's compiler threads take under ``SETTLED_SHARE`` of its CPU in a round
(when its process is readable here: ``$SA01_STATE_DIR/kafka/kafka.pid``), else after
``MAX_ROUNDS``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from bench import load
from bench.common import drop
from bench.procs import ROOT
from bench.stack import bare_loop, bench_settings, route, workers_deployment
from sa01.core.settings import Settings

#: A round is settled when the broker's JIT compiler threads take under this share of its CPU.
SETTLED_SHARE = 0.10
MIN_ROUNDS = 2
MAX_ROUNDS = 8
BURST = 5_000
WORKER_BURST = 1_000
TRANSACTIONS = 200
PER_TRANSACTION = 10


@dataclass(frozen=True)
class Round:
    """One round of warm-up traffic."""

    seconds: float
    broker_cpu_seconds: float | None
    jit_cpu_seconds: float | None

    @property
    def settled(self) -> bool:
        """True when the broker's compiler threads no longer take a large share."""
        if self.broker_cpu_seconds is None or self.jit_cpu_seconds is None:
            return False
        return self.jit_cpu_seconds < SETTLED_SHARE * max(self.broker_cpu_seconds, 1e-9)

    def describe(self) -> str:
        """One line for the bench's output."""
        if self.broker_cpu_seconds is None or self.jit_cpu_seconds is None:
            return f"{self.seconds:.1f} s (the broker's process is not readable here)"
        return (
            f"{self.seconds:.1f} s, broker CPU {self.broker_cpu_seconds:.2f} s, "
            f"of it JIT compiling {self.jit_cpu_seconds:.2f} s"
        )


def broker_pid() -> int | None:
    """The broker's process id from ``scripts/services.sh``'s pid file, when readable."""
    state = Path(os.environ.get("SA01_STATE_DIR", str(ROOT / ".run")))
    try:
        pid = int((state / "kafka" / "kafka.pid").read_text().strip())
        Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return pid


def _thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the process ``pid``: all its threads, and its JIT compiler threads."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = jit = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        total += seconds
        if "CompilerThre" in name:
            jit += seconds
    return total, jit


def _transactions(settings: Settings) -> None:
    """``TRANSACTIONS`` transactions of ``PER_TRANSACTION`` records, read back committed."""
    topic = settings.topic("somabrain.memory.remember")
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "transactional.id": f"warmup-{uuid.uuid4().hex}",
            "linger.ms": 5,
            "log_level": 3,
        }
    )
    producer.init_transactions(30)
    for _ in range(TRANSACTIONS):
        producer.begin_transaction()
        for m in range(PER_TRANSACTION):
            producer.produce(topic, key=f"k{m}".encode(), value=b"x" * 200)
        producer.commit_transaction(60)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"warmup-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        wanted, read = TRANSACTIONS * PER_TRANSACTION, 0
        deadline = time.monotonic() + 60
        while read < wanted and time.monotonic() < deadline:
            read += sum(1 for m in consumer.consume(500, 0.2) if m.error() is None)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()


def _burst(settings: Settings, count: int) -> None:
    r = route(settings)
    with load.ReplyWatcher(r) as watcher:
        prod = load.producer(r.bootstrap)
        load.round_trip(r, prod, watcher, load.messages(count, tag="warm"), 300)


def _round(bare: Settings, worker: Settings, pid: int | None) -> Round:
    before = _thread_cpu(pid) if pid is not None else None
    started = time.perf_counter()
    _burst(bare, BURST)
    _transactions(bare)
    _burst(worker, WORKER_BURST)
    seconds = time.perf_counter() - started
    if pid is None or before is None:
        return Round(seconds, None, None)
    after = _thread_cpu(pid)
    return Round(seconds, after[0] - before[0], after[1] - before[1])


def _warm(bare: Settings, worker: Settings) -> list[Round]:
    pid = broker_pid()
    rounds: list[Round] = []
    with bare_loop(bare), workers_deployment(worker, 1):
        while len(rounds) < MAX_ROUNDS:
            rounds.append(_round(bare, worker, pid))
            print(f"  broker warm-up round {len(rounds)}: {rounds[-1].describe()}", flush=True)
            if len(rounds) >= MIN_ROUNDS and (pid is None or rounds[-1].settled):
                break
    return rounds


async def warm() -> list[Round]:
    """Run the warm-up rounds on a throw-away deployment; the rounds run."""
    bare, worker = await bench_settings(), await bench_settings()
    try:
        return await asyncio.to_thread(_warm, bare, worker)
    finally:
        await drop(bare)
        await drop(worker)
