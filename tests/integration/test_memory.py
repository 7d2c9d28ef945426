"""Memories through SomaBrain: stored when it answers, kept and replayed once when it does not."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from loopback import FailureMode, SomaBrainServer
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.memory import unsynced, with_somabrain
from tests.support.status import state_of, wait_status
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration


async def test_with_somabrain_up_each_exchange_is_remembered_once(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    settings = with_somabrain(stack, somabrain)
    worker = workers.start(settings)
    wait_status(worker, state_of("somabrain", "healthy"))
    sent = [inbound(f"remember {n}", session="s-up") for n in range(3)]
    produce_inbound(settings, sent)

    replies = [
        decode_message(ConversationReply, r.value)
        for r in consume(settings, settings.topic("conversation.outbound"), 3)
    ]
    deadline = time.monotonic() + 60
    while len(somabrain.memories("tenant-a")) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)

    assert all("somabrain" not in r.degraded for r in replies)
    # A memory's key is its tenant and message id.
    assert [m.key for m in somabrain.memories("tenant-a")] == [
        f"{m.tenant_id}:{m.message_id}" for m in sent
    ]
    assert await unsynced(settings) == (0, 0)


async def test_somabrain_down_for_500_messages_all_answered_kept_and_synced_once_in_order(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    settings = with_somabrain(stack, somabrain)
    somabrain.set_mode(FailureMode.REFUSE)
    worker = workers.start(settings)
    wait_status(worker, state_of("somabrain", "unavailable"))
    sent = [inbound(f"message {n}", session=f"session-{n % 10}") for n in range(500)]
    produce_inbound(settings, sent)

    replies = [
        decode_message(ConversationReply, r.value)
        for r in consume(settings, settings.topic("conversation.outbound"), 500, timeout=180)
    ]
    deadline = time.monotonic() + 120
    while (await unsynced(settings))[1] < 500 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    kept = await unsynced(settings)
    somabrain.set_mode(FailureMode.OK)
    while (await unsynced(settings))[0] > 0 and time.monotonic() < deadline + 120:
        await asyncio.sleep(0.5)
    stored = somabrain.memories("tenant-a")

    assert len({r.in_reply_to for r in replies}) == 500
    assert all("somabrain" in r.degraded for r in replies)
    assert kept == (500, 500), "every memory kept in pending_memory while SomaBrain was down"
    assert len(stored) == 500 and len({m.key for m in stored}) == 500
    by_session: dict[str, list[str]] = defaultdict(list)
    for memory in stored:
        by_session[memory.value["session_id"]].append(memory.key)
    expected: dict[str, list[str]] = defaultdict(list)
    for m in sent:
        expected[m.session_id].append(f"{m.tenant_id}:{m.message_id}")
    assert by_session == expected, "memories replayed out of session order"
