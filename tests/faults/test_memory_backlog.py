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

from loopback import SomaBrainServer
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


def assert_once_in_order(server: SomaBrainServer, records: list[MemoryRecord]) -> None:
    stored = server.memories()
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
    assert_once_in_order(somabrain, records)
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
    assert_once_in_order(somabrain, records)
    assert somabrain.remember_count >= len(records)
    wait_committed_to_end(
        settings, settings.topic("somabrain.memory.remember"), transactional=True, timeout=60
    )
