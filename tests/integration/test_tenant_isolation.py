"""Tenant A cannot suppress tenant B's replies or read B's session (issue 12).

Storage isolation (reads and overwrites of B's objects) is shown by
tests/faults/test_noisy_neighbour.py; delayed answers by test_deferred_answers.py.
"""

from __future__ import annotations

import json

import pytest

from loopback import LLMServer
from sa01.core.settings import Settings
from schemas.messages import reply_id_for
from tests.integration.test_worker_end_to_end import outbound, with_llm
from tests.support.kafka import inbound, produce_inbound
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration


async def test_another_tenants_equal_message_id_suppresses_nothing(
    stack: Settings, workers: WorkerFactory
) -> None:
    workers.start(stack)
    # Tenant A sends B's message id first, then again; B's own message must be answered.
    a_first = inbound("from A", tenant="tenant-a", message_id="shared-id")
    a_again = inbound("from A again", tenant="tenant-a", message_id="shared-id")
    b_message = inbound("from B", tenant="tenant-b", message_id="shared-id")
    produce_inbound(stack, [a_first, a_again, b_message])

    replies = outbound(stack, 2, settle=3.0)

    assert len(replies) == 2  # A's copy is a duplicate of A's own message only
    by_tenant = {r.tenant_id: r for r in replies}
    assert set(by_tenant) == {"tenant-a", "tenant-b"}
    assert by_tenant["tenant-b"].text == "echo: from B"
    assert by_tenant["tenant-a"].message_id == reply_id_for("tenant-a", "shared-id")
    assert by_tenant["tenant-b"].message_id == reply_id_for("tenant-b", "shared-id")


async def test_a_session_id_shared_by_two_tenants_keeps_two_histories(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    settings = with_llm(stack, llm_server, memory_enabled=False)
    workers.start(settings)
    produce_inbound(settings, [inbound("A's secret is 4242", tenant="tenant-a", session="s1")])
    outbound(settings, 1)
    produce_inbound(settings, [inbound("what do you know?", tenant="tenant-b", session="s1")])
    produce_inbound(settings, [inbound("and me?", tenant="tenant-a", session="s1")])
    outbound(settings, 3)

    bodies = [json.dumps(r.body) for r in llm_server.requests]
    b_request = next(b for b in bodies if "what do you know?" in b)
    a_request = next(b for b in bodies if "and me?" in b)
    assert "4242" not in b_request  # B's context holds nothing of A's session
    assert "4242" in a_request  # A's own history is there
