"""Memories through the whole worker against a SomaBrain that behaves like the real one."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import pytest
from pydantic import SecretStr

from loopback import LLMServer, SomaBrainServer
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.memory import unsynced, with_somabrain
from tests.support.status import state_of, wait_status
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration


def context_of(server: LLMServer, text: str) -> str:
    """The system context sent to the LLM with the user message ``text`` ('' when none)."""
    for request in server.requests:
        messages: list[dict[str, Any]] = list((request.body or {}).get("messages") or [])
        if messages and messages[-1].get("content") == text:
            return "\n".join(
                str(m.get("content")) for m in messages[:-1] if m.get("role") == "system"
            )
    raise AssertionError(f"no LLM request for {text!r}")


async def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert condition()


async def test_a_memory_is_recalled_in_a_later_message_of_its_tenant_only(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer, llm_server: LLMServer
) -> None:
    settings = with_somabrain(
        stack,
        somabrain,
        responder="litellm",
        llm_model="openai/gpt-4o",
        llm_api_base=llm_server.openai_base_url,
        openai_api_key=SecretStr("sk-test"),
        llm_timeout_seconds=30.0,
    )
    worker = workers.start(settings)
    wait_status(worker, state_of("somabrain", "healthy"))
    first = inbound("my favourite tea is oolong", session="s-1")
    produce_inbound(settings, [first])
    consume(settings, settings.topic("conversation.outbound"), 1)
    await wait_for(
        lambda: (
            [m.key for m in somabrain.memories("tenant-a")]
            == [f"{first.tenant_id}:{first.message_id}"]
        )
    )
    somabrain.clear_working_memory()  # long-term memory alone must find it

    later = inbound("which tea do I like", session="s-2")
    stranger = inbound("which tea do I like?", session="s-3", tenant="tenant-b")
    produce_inbound(settings, [later, stranger])
    consume(settings, settings.topic("conversation.outbound"), 2)

    assert "my favourite tea is oolong" in context_of(llm_server, later.text)
    assert "oolong" not in context_of(llm_server, stranger.text)


async def test_backend_down_for_200_messages_all_kept_despite_the_200s_then_stored_once_in_order(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    settings = with_somabrain(stack, somabrain)
    worker = workers.start(settings)
    wait_status(worker, state_of("somabrain", "healthy"))
    somabrain.set_backend_down(True)
    wait_status(worker, state_of("somabrain", "unavailable"))
    somabrain.reset_requests()
    tenants = [f"tenant-{n}" for n in range(10)]
    sent = [
        inbound(f"message {n}", tenant=tenants[n % 10], session=f"s-{n % 3}") for n in range(200)
    ]
    produce_inbound(settings, sent)

    replies = [
        decode_message(ConversationReply, r.value)
        for r in consume(settings, settings.topic("conversation.outbound"), 200, timeout=180)
    ]
    deadline = time.monotonic() + 120
    while (await unsynced(settings))[1] < 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    kept = await unsynced(settings)
    lied_to = somabrain.remember_count
    assert somabrain.memories() == [], "the backend was down: nothing reached the store"

    somabrain.set_backend_down(False)
    while (await unsynced(settings))[0] > 0 and time.monotonic() < deadline + 120:
        await asyncio.sleep(0.5)
    stored = somabrain.memories()
    print(f"\nbackend down: {lied_to} remembers answered 200, pending {kept}, stored {len(stored)}")

    assert len({r.in_reply_to for r in replies}) == 200
    assert lied_to >= len(tenants), "each tenant's first memory got 200 persisted_to_ltm: true"
    assert kept == (200, 200), "every memory kept in pending_memory despite the 200 answers"
    assert len(stored) == 200 and len({(m.tenant, m.key) for m in stored}) == 200
    # Sessions are answered concurrently, so the order to keep is per tenant and session.
    by_session: dict[tuple[str, str], list[str]] = defaultdict(list)
    for memory in stored:
        by_session[(memory.tenant, memory.value["session_id"])].append(memory.key)
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    for message in sent:
        expected[(message.tenant_id, message.session_id)].append(
            f"{message.tenant_id}:{message.message_id}"
        )
    assert by_session == expected, "memories stored out of order"
    assert await unsynced(settings) == (0, 200)
