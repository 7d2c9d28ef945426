"""``kill -9`` of a worker mid-stream: every message is answered exactly once, in order.

Covers faust-streaming #312/#606 (offsets committed past unprocessed messages): a
message skipped by a bad commit would have no reply at the end.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from loopback import FailureMode, LLMServer
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.integration.test_worker_end_to_end import with_llm
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.faults


async def test_worker_killed_mid_stream_and_restarted_answers_every_message_exactly_once(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    settings = with_llm(stack, llm_server)
    llm_server.set_mode(FailureMode.SLOW, delay_seconds=0.02)
    total = 2000
    sent = [inbound(f"message {n}", session=f"session-{n % 50}") for n in range(total)]
    topic = settings.topic("conversation.outbound")

    first = workers.start(settings, instance="w1")
    produce_inbound(settings, sent)
    seen_before_kill = consume(settings, topic, 300, timeout=120, settle=0)
    first.kill()
    assert len(seen_before_kill) >= 300, "the worker answered too little before the kill"

    workers.start(settings, instance="w1")
    records = consume(settings, topic, total, timeout=240, settle=3.0)

    received = [decode_message(ConversationReply, r.value) for r in records]
    answered = [r.in_reply_to for r in received]
    assert len(set(answered)) == total, f"{total - len(set(answered))} messages never answered"
    assert len(answered) == total, f"{len(answered) - total} duplicate replies"
    expected: dict[str, list[str]] = defaultdict(list)
    for m in sent:
        expected[m.session_id].append(m.message_id)
    actual: dict[str, list[str]] = defaultdict(list)
    for r in received:
        actual[r.session_id].append(r.in_reply_to)
    assert actual == expected, "replies out of session order"
    assert len(seen_before_kill) < total, "the kill came after everything was answered"
