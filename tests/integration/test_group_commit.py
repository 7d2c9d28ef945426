"""Group commit on the real PostgreSQL (issue 17, item 1).

Messages answered together share one transaction and one idempotency lookup; each
message's rows still commit with its idempotency record or not at all; a message
already answered, or whose rows fail, never fails the others of its batch.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import sql

from sa01.core.errors import InfrastructureUnavailableError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import CONVERSATION_INBOUND, CONVERSATION_OUTBOUND, dlq
from sa01.journeys.conversation import ConversationJourney
from sa01.outbox.database import Database
from sa01.outbox.idempotency import EncodedJson, IdempotencyStore
from sa01.outbox.store import OutboxRecord
from sa01.pipeline.conversation import ConversationProcessor, Outcome
from sa01.pipeline.dead_lettering import InboundMessage
from sa01.pipeline.group_commit import Answered, GroupCommitter
from sa01.providers.responder import EchoResponder
from sa01.resilience.retry import Backoff
from schemas.codec import encode_message
from schemas.headers import ERRORS_EXCEPTION
from schemas.messages import ConversationInbound, ConversationReply

pytestmark = pytest.mark.integration

N = 40


def batched(settings: Settings) -> Settings:
    """``settings`` whose batches wait long enough to gather every message of a test."""
    return settings.model_copy(update={"group_commit_max_wait_seconds": 0.05})


def answered(settings: Settings, n: int, *, header: str = "ok") -> Answered:
    topic = settings.topic(CONVERSATION_OUTBOUND)
    return Answered(
        key=f"k-{n}",
        result={"n": n},
        records=(
            OutboxRecord(topic, f"reply {n}".encode(), f"reply-{n}", f"s-{n}".encode()),
            OutboxRecord(topic, f"memory {n}".encode(), f"memory-{n}", None, {"h": header}),
        ),
    )


def sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def keys_of(database: Database, table: str, column: str) -> set[str]:
    async with database.connection() as conn:
        query = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(column), sql.Identifier(table))
        cur = await conn.execute(query)
        return {str(row[0]) for row in await cur.fetchall()}


async def test_messages_committed_together_share_transactions_and_lookups(
    stack: Settings,
) -> None:
    settings = batched(stack)
    registry = CollectorRegistry()
    wakes: list[None] = []
    async with Database(settings) as database:
        committer = GroupCommitter(
            settings, database, Metrics(registry), lambda: wakes.append(None)
        )
        assert not any(await asyncio.gather(*(committer.answered(f"k-{n}") for n in range(N))))
        results = await asyncio.gather(*(committer.commit(answered(settings, n)) for n in range(N)))
        assert results == [True] * N
        assert await asyncio.gather(*(committer.answered(f"k-{n}") for n in range(N))) == [True] * N
        outbox = await keys_of(database, "outbox_message", "idempotency_key")
        recorded = await keys_of(database, "idempotency_record", "key")
    assert outbox == {f"reply-{n}" for n in range(N)} | {f"memory-{n}" for n in range(N)}
    assert recorded == {f"k-{n}" for n in range(N)}
    transactions = sample(registry, "outbox_commit_batch_size_count")
    assert sample(registry, "outbox_commit_batch_size_sum") == N
    assert 1 <= transactions < N
    assert len(wakes) == transactions  # the relay is woken once per commit, not per message
    lookups = sample(registry, "idempotency_lookup_batch_size_count")
    assert sample(registry, "idempotency_lookup_batch_size_sum") == 2 * N
    assert 2 <= lookups < 2 * N


async def test_encoded_results_are_stored_as_json_and_rows_keep_the_batch_order(
    stack: Settings,
) -> None:
    settings = batched(stack)
    async with Database(settings) as database:
        committer = GroupCommitter(settings, database, Metrics(CollectorRegistry()))
        batch = [
            Answered(
                key=f"k-{n}",
                result=EncodedJson(json.dumps({"n": n, "text": "é"})),
                records=answered(settings, n).records,
            )
            for n in range(N)
        ]
        assert await asyncio.gather(*(committer.commit(a) for a in batch)) == [True] * N
        async with database.connection() as conn:
            found, result = await IdempotencyStore().get(conn, "k-7")
            cur = await conn.execute("SELECT idempotency_key FROM outbox_message ORDER BY id")
            order = [str(row[0]) for row in await cur.fetchall()]
    assert found and result == {"n": 7, "text": "é"}
    assert order == [key for n in range(N) for key in (f"reply-{n}", f"memory-{n}")]


async def test_a_message_already_answered_writes_nothing_and_its_batch_commits(
    stack: Settings,
) -> None:
    settings = batched(stack)
    registry = CollectorRegistry()
    async with Database(settings) as database:
        async with database.connection() as conn:
            assert await IdempotencyStore().put(conn, "k-3", {"by": "another worker"}, timedelta(1))
        committer = GroupCommitter(settings, database, Metrics(registry))
        results = await asyncio.gather(
            *(committer.commit(answered(settings, n)) for n in range(N)),
            committer.commit(answered(settings, 5)),  # the same message twice in one batch
        )
        outbox = await keys_of(database, "outbox_message", "idempotency_key")
    assert results == [n != 3 for n in range(N)] + [False]
    assert "reply-3" not in outbox and "memory-3" not in outbox
    assert len(outbox) == 2 * (N - 1)
    assert sample(registry, "outbox_commit_fallbacks_total") == 0


async def test_a_message_whose_rows_fail_is_alone_in_failing(stack: Settings) -> None:
    settings = batched(stack)
    registry = CollectorRegistry()
    async with Database(settings) as database:
        committer = GroupCommitter(settings, database, Metrics(registry))
        results = await asyncio.gather(
            *(
                committer.commit(answered(settings, n, header="\x00" if n == 7 else "ok"))
                for n in range(N)
            ),
            return_exceptions=True,
        )
        outbox = await keys_of(database, "outbox_message", "idempotency_key")
        recorded = await keys_of(database, "idempotency_record", "key")
    assert isinstance(results[7], psycopg.DataError)
    assert [r for n, r in enumerate(results) if n != 7] == [True] * (N - 1)
    # Its idempotency record was written before its outbox row failed: both are gone.
    assert "k-7" not in recorded and "reply-7" not in outbox
    assert recorded == {f"k-{n}" for n in range(N) if n != 7}
    assert sample(registry, "outbox_commit_fallbacks_total") == 1


class LeakyJourney(ConversationJourney):
    """Answers ``poison rows`` with a text PostgreSQL cannot store (as a buggy model
    client might): the message's rows fail in the transaction."""

    async def answer(
        self, inbound: ConversationInbound, *, reply_id: str | None = None
    ) -> ConversationReply:
        reply = await super().answer(inbound, reply_id=reply_id)
        if inbound.text == "poison rows":
            return reply.model_copy(update={"text": "\x00"})
        return reply


def inbound(settings: Settings, n: int, text: str) -> InboundMessage:
    message = ConversationInbound(
        message_id=f"m-{n}",
        tenant_id="tenant-a",
        session_id=f"s-{n}",
        agent_id="agent",
        text=text,
        created_at=datetime.now(UTC),
    )
    return InboundMessage(
        settings.topic(CONVERSATION_INBOUND),
        0,
        n,
        message.partition_key.encode(),
        encode_message(message),
    )


async def test_processor_answers_concurrent_messages_in_shared_transactions_and_dead_letters_the_one_that_fails(  # noqa: E501
    stack: Settings,
) -> None:
    # Memory off: the memory record validates its text and would refuse the NUL first.
    settings = batched(stack).model_copy(update={"memory_enabled": False})
    registry = CollectorRegistry()
    async with Database(settings) as database:
        processor = ConversationProcessor(
            settings, database, LeakyJourney(EchoResponder()), Metrics(registry)
        )
        messages = [inbound(settings, n, "poison rows" if n == 11 else f"hi {n}") for n in range(N)]
        outcomes = await asyncio.gather(*(processor.process(m) for m in messages))
        again = await asyncio.gather(*(processor.process(m) for m in messages[:5]))
        await processor.close()
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT topic, headers FROM outbox_message WHERE topic = %s",
                (dlq(settings.topic(CONVERSATION_INBOUND)),),
            )
            dead = await cur.fetchall()
            cur = await conn.execute(
                "SELECT count(*) FROM outbox_message WHERE topic = %s",
                (settings.topic(CONVERSATION_OUTBOUND),),
            )
            row = await cur.fetchone()
    assert outcomes == [Outcome.DEAD_LETTERED if n == 11 else Outcome.REPLIED for n in range(N)]
    assert again == [Outcome.DUPLICATE] * 5
    assert row is not None and row[0] == N - 1
    assert len(dead) == 1
    headers = dead[0][1]
    assert isinstance(headers, dict) and "UntranslatableCharacter" in headers[ERRORS_EXCEPTION]
    assert sample(registry, "outbox_commit_batch_size_count") < N
    assert sample(registry, "idempotency_lookup_batch_size_count") < N + 5


async def test_an_outage_fails_the_whole_batch_alike_and_is_not_bisected(stack: Settings) -> None:
    # A real refused connection (nothing listens on port 1), not a stand-in for the driver.
    settings = batched(stack).model_copy(
        update={"database_url": "postgresql://sa01@127.0.0.1:1/sa01?connect_timeout=1"}
    )
    registry = CollectorRegistry()
    database = Database(settings)
    await database.open()
    try:
        committer = GroupCommitter(settings, database, Metrics(registry))
        results = await asyncio.gather(
            *(committer.commit(answered(settings, n)) for n in range(5)),
            return_exceptions=True,
        )
    finally:
        await database.close()
    assert all(isinstance(r, InfrastructureUnavailableError) for r in results), results
    assert sample(registry, "outbox_commit_batch_size_count") == 1
    assert sample(registry, "outbox_commit_fallbacks_total") == 0


class FlakyJourney(ConversationJourney):
    """Meets an outage of the pipeline's own storage on its first ``outages`` calls."""

    def __init__(self, outages: int) -> None:
        super().__init__(EchoResponder())
        self.outages = outages
        self.calls = 0

    async def answer(
        self, inbound: ConversationInbound, *, reply_id: str | None = None
    ) -> ConversationReply:
        self.calls += 1
        if self.calls <= self.outages:
            raise InfrastructureUnavailableError("kafka", "broker gone")
        return await super().answer(inbound, reply_id=reply_id)


async def test_an_outage_while_answering_is_waited_out_with_growing_waits(
    stack: Settings,
) -> None:
    settings = stack.model_copy(update={"memory_enabled": False, "processing_max_attempts": 1})
    waits: list[float] = []

    async def no_sleep(_stopping: object, seconds: float) -> None:
        waits.append(seconds)

    registry = CollectorRegistry()
    journey = FlakyJourney(outages=6)
    async with Database(settings) as database:
        processor = ConversationProcessor(settings, database, journey, Metrics(registry))
        processor.backoff = Backoff(initial=0.2, maximum=5.0, jitter=0.0)
        processor.sleep = no_sleep
        outcome = await processor.process(inbound(settings, 1, "hi"))
        await processor.close()
    # Not a failed attempt (max attempts 1): answered once the outage is over.
    assert outcome == Outcome.REPLIED and journey.calls == 7
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]  # the waits grow (issue 16), capped
    assert (
        registry.get_sample_value("conversation_infrastructure_retries_total", {"service": "kafka"})
        == 6
    )
