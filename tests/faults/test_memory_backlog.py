"""A memory backlog written in transactions drains: once each, in order per tenant and agent.

The backlog is written as the transactional relay writes it (transactions of 10, so a
control record, an offset gap, after every few records of each partition) before the
worker starts. The worker must commit every partition to its end (gap tracking,
streams.gaps), and a worker killed with ``kill -9`` in the middle of the drain and
restarted must leave every memory stored once, in order per (tenant, agent).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest

from loopback import FailureMode, SomaBrainServer
from loopback.somabrain_server import StoredMemory
from sa01.core.settings import Settings
from schemas.codec import encode_message
from schemas.messages import MemoryRecord
from tests.support.kafka import produce_transactional, wait_committed_to_end
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.faults

PAIRS = [(f"tenant-{t}", f"agent-{a}") for t in range(6) for a in range(5)]


def backlog(count: int) -> list[MemoryRecord]:
    """``count`` memories spread over 30 (tenant, agent) pairs, round robin."""
    records = []
    for n in range(count):
        tenant, agent = PAIRS[n % len(PAIRS)]
        records.append(
            MemoryRecord(
                memory_id=f"m-{n:05d}-{uuid.uuid4().hex[:8]}",
                tenant_id=tenant,
                agent_id=agent,
                session_id="s1",
                content=f"memory {n}",
            )
        )
    return records


def write_backlog(settings: Settings, records: list[MemoryRecord]) -> None:
    produce_transactional(
        settings,
        settings.topic("somabrain.memory.remember"),
        [(m.partition_key.encode(), encode_message(m)) for m in records],
        per_transaction=10,
    )


def with_somabrain(settings: Settings, server: SomaBrainServer) -> Settings:
    return settings.model_copy(
        update={"somabrain_url": server.base_url, "health_probes": "postgres,somabrain"}
    )


def wait_stored(server: SomaBrainServer, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(server.memories()) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def assert_once_in_order(stored: list[StoredMemory], records: list[MemoryRecord]) -> None:
    """``stored`` (in first-insertion order) is ``records``, each once, in order per pair."""
    assert len(stored) == len(records), f"{len(stored)} memories stored of {len(records)}"
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    for m in records:
        expected[(m.tenant_id, m.agent_id)].append(m.memory_id)
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for memory in stored:
        seen[(memory.tenant, memory.value["agent_id"])].append(memory.key)
    assert seen == expected, "memories stored out of order within a tenant and agent"


async def test_a_transactional_memory_backlog_drains_and_the_group_commits_to_the_end(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    settings = with_somabrain(stack, somabrain).model_copy(update={"backlog_sample_seconds": 0.2})
    records = backlog(3_000)
    write_backlog(settings, records)
    worker = workers.start(settings)
    seen_left: list[int] = []
    deadline = time.monotonic() + 240
    while len(somabrain.memories()) < len(records) and time.monotonic() < deadline:
        status = worker.get("/status").json()
        if "backlog" in status:  # 503 "recovering" until the table is read
            seen_left.append(status["backlog"]["memory"]["rows_left"])
        time.sleep(0.2)
    assert_once_in_order(somabrain.memories(), records)
    topic = settings.topic("somabrain.memory.remember")
    wait_committed_to_end(settings, topic, transactional=True, timeout=60)

    assert max(seen_left, default=0) > 0, "/status never showed the memory backlog"
    time.sleep(1.0)
    memory = worker.get("/status").json()["backlog"]["memory"]
    assert memory["rows_left"] <= settings.topic_partitions  # one last marker each at most
    metrics = worker.get("/metrics").text
    assert (
        f'consumer_records_total{{consumer="memory",outcome="stored"}} {len(records)}.0' in metrics
    )
    assert f'consumer_lag{{consumer="memory",partition="0",topic="{topic}"}}' in metrics


async def test_worker_killed_mid_memory_backlog_and_restarted_stores_each_memory_once_in_order(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    settings = with_somabrain(stack, somabrain)
    records = backlog(3_000)
    write_backlog(settings, records)
    worker = workers.start(settings)
    wait_stored(somabrain, len(records) // 3, 240)
    worker.kill()
    at_kill = len(somabrain.memories())
    assert 0 < at_kill < len(records), f"killed at {at_kill}: not in the middle of the drain"

    workers.start(settings)
    wait_stored(somabrain, len(records), 240)
    assert_once_in_order(somabrain.memories(), records)
    assert somabrain.remember_count >= len(records)
    wait_committed_to_end(
        settings, settings.topic("somabrain.memory.remember"), transactional=True, timeout=60
    )


def memory_gauges(metrics: str) -> tuple[float, float]:
    """``consumer_records_in_flight`` and ``consumer_fetch_paused`` of the memory agent."""
    values = {"consumer_records_in_flight": 0.0, "consumer_fetch_paused": 0.0}
    for line in metrics.splitlines():
        name, _, rest = line.partition("{")
        if name in values and 'consumer="memory"' in rest:
            values[name] = float(line.rsplit(" ", 1)[1])
    return values["consumer_records_in_flight"], values["consumer_fetch_paused"]


async def test_a_slow_somabrain_holds_the_memory_agent_to_its_read_ahead_and_every_memory_is_stored(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    # Each memory takes a second (remember, then the /health confirmation): the fetch
    # outruns the agent, which must stop taking records at its read-ahead instead of
    # pulling the whole backlog in (streams.read_ahead).
    read_ahead, batch = 40, 20
    settings = with_somabrain(stack, somabrain).model_copy(
        update={
            "backlog_sample_seconds": 0.1,
            "background_read_ahead": read_ahead,
            "fetch_max_records": batch,
        }
    )
    records = backlog(600)
    write_backlog(settings, records)
    somabrain.set_mode(FailureMode.SLOW, delay_seconds=0.5)
    worker = workers.start(settings)
    peak, throttled = 0.0, False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (throttled and len(somabrain.memories()) > 100):
        in_flight, paused = memory_gauges(worker.get("/metrics").text)
        peak, throttled = max(peak, in_flight), throttled or paused == 1.0
        time.sleep(0.05)
    somabrain.set_mode(FailureMode.OK)
    wait_stored(somabrain, len(records), 240)

    assert throttled, "the memory topic was never left out of the fetch"
    assert 0 < peak <= read_ahead + 2 * batch, f"the memory agent held {peak} records"
    assert_once_in_order(somabrain.memories(), records)
    wait_committed_to_end(
        settings, settings.topic("somabrain.memory.remember"), transactional=True, timeout=60
    )


async def test_one_tenants_memory_backlog_does_not_hold_another_tenants_memories_behind_it(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    # Tenant A's 600 memories of one agent run one at a time (their order), slowly; tenant
    # B's 20, on the same partition after them, must not wait for them: A's records over
    # its share are parked, not counted against the read-ahead, so B's are still fetched.
    settings = with_somabrain(stack, somabrain)
    hot = [
        MemoryRecord(
            memory_id=f"a-{n:04d}",
            tenant_id="tenant-a",
            agent_id="agent",
            session_id="s",
            content=f"a {n}",
        )
        for n in range(600)
    ]
    quiet = [
        MemoryRecord(
            memory_id=f"b-{n:04d}",
            tenant_id="tenant-b",
            agent_id=f"agent-{n % 5}",
            session_id="s",
            content=f"b {n}",
        )
        for n in range(20)
    ]
    produce_transactional(
        settings,
        settings.topic("somabrain.memory.remember"),
        [(m.partition_key.encode(), encode_message(m)) for m in hot + quiet],
        partition=0,
    )
    somabrain.set_mode(FailureMode.SLOW, delay_seconds=0.02)
    workers.start(settings)

    def stored(tenant: str) -> int:
        return sum(1 for memory in somabrain.memories() if memory.tenant == tenant)

    deadline = time.monotonic() + 120
    while stored("tenant-b") < len(quiet) and time.monotonic() < deadline:
        time.sleep(0.05)
    hot_stored = stored("tenant-a")
    somabrain.set_mode(FailureMode.OK)
    wait_stored(somabrain, len(hot) + len(quiet), 240)

    assert hot_stored < len(hot) // 2, f"tenant B waited for {hot_stored} of tenant A's memories"
    assert_once_in_order(somabrain.memories(), hot + quiet)
