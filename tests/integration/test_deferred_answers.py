"""Delayed answers on the real PostgreSQL: a row that cannot be answered never blocks the
rows behind it, and ends dead-lettered after bounded attempts (issue 12)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from sa01.core.errors import PermanentError, RequestTooLongError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.journeys.conversation import ConversationJourney
from sa01.outbox.database import Database
from sa01.outbox.owed_answers import DeferredAnswerStore
from sa01.pipeline.dead_lettering import DeadLetterWriter
from sa01.pipeline.deferred_answers import DeferredAnswerer, answer_id_for
from sa01.providers.responder import ResponderAnswer
from schemas.messages import ConversationInbound

pytestmark = pytest.mark.integration


class ScriptedResponder:
    """Answers, except for texts naming a failure: ``poison`` (permanent), ``bug``
    (an unexpected exception) and ``long`` (the model's context window)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def respond(
        self,
        text: str,
        *,
        session_key: str,
        context: Sequence[str] = (),
        use_case: str = "chat",
    ) -> ResponderAnswer:
        self.calls.append(text)
        if text == "poison":
            raise PermanentError("this message can never be answered")
        if text == "bug":
            raise RuntimeError("an unexpected failure")
        if text == "long":
            raise RequestTooLongError("longer than the context window")
        return ResponderAnswer(text=f"answer to {text}", model="scripted")


def owed(message_id: str, text: str, tenant: str = "tenant-a") -> ConversationInbound:
    return ConversationInbound(
        message_id=message_id,
        tenant_id=tenant,
        session_id="s",
        agent_id="agent",
        text=text,
        created_at=datetime.now(UTC),
    )


async def test_a_poisoned_delayed_answer_is_dead_lettered_and_blocks_nobody(
    stack: Settings,
) -> None:
    settings = stack.model_copy(update={"processing_max_attempts": 2, "memory_enabled": False})
    database = Database(settings)
    await database.open(wait=True)
    responder = ScriptedResponder()
    journey = ConversationJourney(responder)
    metrics = Metrics()
    answerer = DeferredAnswerer(
        settings, database, journey, DeadLetterWriter(settings, database, metrics)
    )
    store = DeferredAnswerStore()
    rows = [
        owed("m-1", "poison"),
        owed("m-2", "bug"),
        owed("m-3", "long"),
        owed("m-4", "fine"),
        # Another tenant's message with the same id is its own row.
        owed("m-1", "fine too", tenant="tenant-b"),
    ]
    try:
        async with database.connection() as conn:
            for row in rows:
                assert await store.add(conn, row)

        sent = await answerer.answer_due()

        # The poison is dead-lettered at once; the bug waits for another try; the
        # caller's too-long message is answered with its notice; the rest answered.
        assert sent == 3
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT message_id, answered_at IS NOT NULL, attempts, last_error"
                " FROM deferred_answer ORDER BY message_id"
            )
            state = {r[0]: (r[1], r[2], r[3]) for r in await cur.fetchall()}
            cur = await conn.execute(
                "SELECT topic, idempotency_key, payload FROM outbox_message ORDER BY id"
            )
            outbox = await cur.fetchall()
            cur = await conn.execute("SELECT error_class, payload FROM dead_letter_message")
            dead = await cur.fetchall()
        assert state["tenant-a:m-1"][0] is True
        assert state["tenant-a:m-1"][2].startswith("gave up: PermanentError")
        assert state["tenant-a:m-2"][:2] == (False, 1)
        assert state["tenant-a:m-3"][0] is True
        assert state["tenant-a:m-4"][0] is True
        assert state["tenant-b:m-1"][0] is True
        replies = [r for r in outbox if r[0] == settings.topic("conversation.outbound")]
        keys = {r[1].rsplit(":", 1)[1] for r in replies}  # "<topic>:<reply id>"
        assert keys == {
            answer_id_for("tenant-a", "m-3"),
            answer_id_for("tenant-a", "m-4"),
            answer_id_for("tenant-b", "m-1"),
        }
        too_long = next(r for r in replies if r[1].endswith(answer_id_for("tenant-a", "m-3")))
        assert b"please shorten" in too_long[2]
        assert [r[0] for r in outbox if r[0].endswith(".dlq")] == [
            settings.topic("conversation.inbound.dlq")
        ]
        assert [d[0] for d in dead] == ["sa01.core.errors.PermanentError"]
        assert b'"poison"' in bytes(dead[0][1])

        # The bug is retried after its backoff, and dead-lettered at the bound.
        async with database.connection() as conn:
            await conn.execute("UPDATE deferred_answer SET next_attempt_at = now()")
        assert await answerer.answer_due() == 0
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT answered_at IS NOT NULL, last_error FROM deferred_answer"
                " WHERE message_id = 'tenant-a:m-2'"
            )
            closed, error = await cur.fetchone() or (None, None)
            cur = await conn.execute("SELECT count(*) FROM dead_letter_message")
            dead_count = (await cur.fetchone() or (0,))[0]
        assert closed is True
        assert str(error).startswith("gave up: RuntimeError")
        assert dead_count == 2
        assert responder.calls.count("poison") == 1
        assert responder.calls.count("bug") == 2
    finally:
        await database.close()
