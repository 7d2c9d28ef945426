"""Workers of two roles in one consumer group split the work by topic (SA01_WORKER_ROLE).

A ``replies`` worker answers conversations while a ``background`` worker drains a memory
backlog written in transactions. The background worker is killed with ``kill -9`` in the
middle of the drain: replies keep coming from the other worker meanwhile, and once the
background worker is back every memory is stored once, in order per (tenant, agent).
"""

from __future__ import annotations

import re
import time

import pytest

from loopback import SomaBrainServer
from loopback.somabrain_server import StoredMemory
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.faults.test_memory_backlog import (
    assert_once_in_order,
    backlog,
    with_somabrain,
    write_backlog,
)
from tests.support.kafka import consume, inbound, produce_inbound, wait_committed_to_end
from tests.support.worker import WorkerFactory, WorkerProcess

pytestmark = pytest.mark.faults

#: The backlog's tenants (tests.faults.test_memory_backlog.PAIRS); replies are remembered
#: under the conversation's tenant, which is not one of them.
BACKLOG_TENANTS = {f"tenant-{t}" for t in range(6)}


def backlog_stored(server: SomaBrainServer) -> list[StoredMemory]:
    """The backlog's memories stored, in first-insertion order."""
    return [m for m in server.memories() if m.tenant in BACKLOG_TENANTS]


def wait_backlog_stored(server: SomaBrainServer, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(backlog_stored(server)) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def finished(worker: WorkerProcess, consumer: str) -> float:
    """Records ``consumer`` finished in ``worker``, every outcome together."""
    pattern = re.compile(rf'^consumer_records_total\{{consumer="{consumer}",[^}}]*\}} (\S+)$')
    return sum(
        float(m.group(1))
        for line in worker.get("/metrics").text.splitlines()
        if (m := pattern.match(line))
    )


def answer(settings: Settings, count: int) -> None:
    """Send ``count`` messages and check each is answered exactly once."""
    messages = [
        inbound(f"hello {n}", tenant="tenant-chat", session=f"s{n % 4}") for n in range(count)
    ]
    sent = {m.message_id for m in messages}
    produce_inbound(settings, messages)
    outbound = consume(settings, settings.topic("conversation.outbound"), count, timeout=120)
    answered = [decode_message(ConversationReply, r.value).in_reply_to for r in outbound]
    assert sorted(a for a in answered if a in sent) == sorted(sent)


async def test_background_worker_killed_mid_drain_leaves_replies_flowing_and_memories_once_in_order(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    settings = with_somabrain(stack, somabrain)
    records = backlog(3_000)
    write_backlog(settings, records)
    replies = workers.start(settings, instance="replies", SA01_WORKER_ROLE="replies")
    background = workers.start(settings, instance="background", SA01_WORKER_ROLE="background")
    assert "worker ready: background work" in background.log_tail(400)
    assert "background worker niceness raised by 10" in background.log_tail(400)

    wait_backlog_stored(somabrain, len(records) // 3, 240)
    background.kill()
    at_kill = len(backlog_stored(somabrain))
    assert 0 < at_kill < len(records), f"killed at {at_kill}: not in the middle of the drain"

    # The replies worker never took the memory topic: it answers alone meanwhile.
    answer(settings, 20)
    assert finished(replies, "memory") == 0
    assert finished(replies, "conversation") >= 20

    background = workers.start(settings, instance="background", SA01_WORKER_ROLE="background")
    wait_backlog_stored(somabrain, len(records), 240)
    assert_once_in_order(backlog_stored(somabrain), records)
    assert finished(background, "conversation") == 0
    wait_committed_to_end(
        settings, settings.topic("somabrain.memory.remember"), transactional=True, timeout=60
    )
