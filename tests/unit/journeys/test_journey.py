"""Unit tests of the conversation journey with the in-process echo responder."""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from datetime import UTC, datetime

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.journeys.conversation import ConversationJourney
from sa01.providers.llm_chain import build_responder_chain
from sa01.providers.responder import EchoResponder, ResponderAnswer
from schemas.messages import ConversationInbound, ConversationReply, reply_id_for


def make_inbound(message_id: str = "m-1", text: str = "hello") -> ConversationInbound:
    return ConversationInbound(
        message_id=message_id,
        tenant_id="tenant-a",
        session_id="session-7",
        agent_id="agent-x",
        text=text,
        created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


async def test_answer_builds_the_reply() -> None:
    inbound = make_inbound()
    reply = await ConversationJourney(EchoResponder()).answer(inbound)
    assert isinstance(reply, ConversationReply)
    assert reply.in_reply_to == "m-1"
    assert reply.tenant_id == "tenant-a"
    assert reply.session_id == "session-7"
    assert reply.model == "echo"
    assert reply.message_id == reply_id_for("tenant-a", "m-1")
    assert reply.message_id != inbound.message_id
    assert reply.text == "echo: hello"
    assert reply.degraded == ()


async def test_answer_is_deterministic_in_its_id() -> None:
    journey = ConversationJourney(EchoResponder())
    first = await journey.answer(make_inbound("m-9"))
    second = await journey.answer(make_inbound("m-9"))
    other = await journey.answer(make_inbound("m-10"))
    assert first.message_id == second.message_id == reply_id_for("tenant-a", "m-9")
    assert other.message_id != first.message_id


async def test_answer_passes_the_partition_key_to_the_responder() -> None:
    seen: list[tuple[str, str]] = []

    class Recording(EchoResponder):
        async def respond(
            self,
            text: str,
            *,
            session_key: str,
            context: Sequence[str] = (),
            use_case: str = "chat",
        ) -> ResponderAnswer:
            seen.append((text, session_key))
            return await super().respond(text, session_key=session_key)

    await ConversationJourney(Recording()).answer(make_inbound(text="hi"))
    assert seen == [("hi", "tenant-a:session-7")]


def test_build_responder_echo() -> None:
    assert isinstance(
        build_responder_chain(Settings(responder="echo"), Metrics()).responder, EchoResponder
    )
