"""Every model down: each message gets an immediate degraded reply, the real answer later."""

from __future__ import annotations

from collections import defaultdict

import pytest

from loopback import FailureMode, LLMServer
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply, MemoryRecord
from tests.integration.test_worker_end_to_end import with_llm
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration


async def test_with_every_model_down_each_message_is_answered_now_and_properly_later(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    settings = with_llm(
        stack,
        llm_server,
        llm_breaker_wait_seconds=1.0,
        deferred_answer_interval_seconds=0.5,
        health_probes="postgres",
    )
    llm_server.set_mode(FailureMode.ERROR_500)
    workers.start(settings)
    sent = [inbound(f"question {n}", session=f"s{n % 4}") for n in range(20)]
    produce_inbound(settings, sent)
    topic = settings.topic("conversation.outbound")

    immediate = [decode_message(ConversationReply, r.value) for r in consume(settings, topic, 20)]
    llm_server.set_mode(FailureMode.OK)
    everything = [
        decode_message(ConversationReply, r.value)
        for r in consume(settings, topic, 40, timeout=120, settle=3.0)
    ]

    assert {r.in_reply_to for r in immediate} == {m.message_id for m in sent}
    assert all(r.model == "none" and "llm" in r.degraded for r in immediate)
    assert all(r.notices == ("Answer delayed: language models unavailable",) for r in immediate)
    by_message: dict[str, list[ConversationReply]] = defaultdict(list)
    for reply in everything:
        by_message[reply.in_reply_to].append(reply)
    assert len(everything) == 40, f"{len(everything)} replies for 20 messages (want 2 each)"
    for message in sent:
        first, real = by_message[message.message_id]
        assert first.model == "none"
        assert real.model == "gpt-4o"
        assert real.text == f"[primary] {message.text}"
        assert real.notices == ("Answer sent after a delay",)
        assert real.message_id != first.message_id
    # Each exchange is remembered once, with the real answer (not the placeholder).
    memories = [
        decode_message(MemoryRecord, r.value)
        for r in consume(settings, settings.topic("somabrain.memory.remember"), 20, settle=2.0)
    ]
    assert sorted(m.memory_id for m in memories) == sorted(
        f"{m.tenant_id}:{m.message_id}" for m in sent
    )
    assert all("[primary] question" in m.content for m in memories)
