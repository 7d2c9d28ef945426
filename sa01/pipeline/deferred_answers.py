"""Real answers owed after a degraded reply: retried until a model answers.

When every model of a chain is down the conversation agent replies at once with a clear
degraded reply and records the message in ``deferred_answer``. One answerer per schema
(a :class:`~outbox.singleton.SingletonJob`; every worker runs one, one holds the lock)
retries the oldest owed answers; the real answer
goes out through the outbox in the same transaction that marks it given, so it is sent
once. A message the models refuse is answered with the refusal; one that fails for any
other reason is retried with backoff at most ``processing_max_attempts`` times and then
dead-lettered to ``conversation.inbound.dlq``, so no row blocks the ones behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from enum import Enum

from pydantic import ValidationError

from sa01.core.errors import (
    CallerError,
    InfrastructureUnavailableError,
    MessageValidationError,
    PermanentError,
    TransientError,
)
from sa01.core.settings import Settings
from sa01.core.topics import CONVERSATION_INBOUND, CONVERSATION_OUTBOUND, MEMORY_REMEMBER
from sa01.journeys.conversation import ConversationJourney
from sa01.outbox.database import Database
from sa01.outbox.owed_answers import DeferredAnswerStore, OwedAnswer
from sa01.outbox.singleton import Lease, SingletonJob
from sa01.outbox.store import OutboxStore
from sa01.pipeline.dead_lettering import DeadLetterWriter, InboundMessage
from sa01.pipeline.records import message_record
from sa01.resilience.retry import sleep_unless
from schemas.messages import ConversationInbound, reply_id_for

__all__ = ["DeferredAnswerer", "answer_id_for"]

logger = logging.getLogger(__name__)


def answer_id_for(tenant_id: str, message_id: str) -> str:
    """The id of the real answer that follows a degraded reply."""
    return reply_id_for(tenant_id, f"{message_id}#answer")


class _Pass(Enum):
    SENT = "sent"
    FAILED = "failed"
    GAVE_UP = "gave_up"
    MODELS_DOWN = "models_down"


class DeferredAnswerer:
    """Retries owed answers in the background; constructing it does no I/O."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        journey: ConversationJourney,
        dead_letters: DeadLetterWriter,
        on_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.journey = journey
        self.dead_letters = dead_letters
        self.inbound_topic = settings.topic(CONVERSATION_INBOUND)
        self.on_committed = on_committed
        self.store = DeferredAnswerStore()
        self.outbox = OutboxStore()
        self.topic = settings.topic(CONVERSATION_OUTBOUND)
        self.memory_topic = settings.topic(MEMORY_REMEMBER)
        self.job = SingletonJob(
            settings,
            name="deferred-answers",
            lock_key=settings.deferred_answer_lock_key,
            body=self._answer_forever,
        )

    async def answer_due(self, limit: int = 50) -> int:
        """One pass (if this process gets the lock): how many real answers were sent."""
        return await self.job.run_once(lambda lease: self._one_pass(limit)) or 0

    async def _answer_forever(self, lease: Lease) -> None:
        """The job's body: a pass every ``deferred_answer_interval_seconds`` until stopped
        (checked between passes too: a cancellation a pass swallows must not spin it)."""
        lease.healthy()
        while not lease.stopping.is_set():
            sent = await self._one_pass(50)
            if sent:
                logger.info("sent %d delayed answers", sent)
            await sleep_unless(lease.stopping, self.settings.deferred_answer_interval_seconds)

    async def _one_pass(self, limit: int) -> int:
        """Every due row ends answered, backed off or dead-lettered: a row that cannot be
        answered never blocks the rows behind it."""
        async with self.database.connection() as conn:
            owed = await self.store.due(conn, limit)
        sent = 0
        for answer in owed:
            outcome = await self._answer_one(answer)
            if outcome is _Pass.MODELS_DOWN:
                break  # the models are still down: try again at the next pass
            if outcome is _Pass.SENT:
                sent += 1
        return sent

    async def _answer_one(self, owed: OwedAnswer) -> _Pass:
        try:
            inbound = ConversationInbound.model_validate(owed.document, strict=False)
        except ValidationError as exc:
            await self._give_up(owed, None, MessageValidationError(f"stored message: {exc}"))
            return _Pass.GAVE_UP
        reply_id = answer_id_for(inbound.tenant_id, inbound.message_id)
        try:
            reply = await self.journey.answer(inbound, reply_id=reply_id)
        except CallerError as exc:
            reply = self.journey.refusal(inbound, exc, reply_id=reply_id)
        except InfrastructureUnavailableError:
            raise
        except TransientError as exc:
            await self._failed(owed, exc, timedelta(seconds=2.0))
            return _Pass.MODELS_DOWN
        except Exception as exc:  # a permanent error or a bug: bounded, then dead-lettered
            attempts = owed.attempts + 1
            if isinstance(exc, PermanentError) or attempts >= self.settings.processing_max_attempts:
                await self._give_up(owed, inbound, exc)
                return _Pass.GAVE_UP
            logger.warning("delayed answer failed (attempt %d): %s", attempts, type(exc).__name__)
            await self._failed(owed, exc, timedelta(seconds=2.0 * 2**attempts))
            return _Pass.FAILED
        reply = reply.model_copy(update={"notices": (*reply.notices, "Answer sent after a delay")})
        async with self.database.connection() as conn, conn.transaction():
            if not await self.store.answered(conn, owed.key):
                return _Pass.FAILED
            await self.outbox.add(
                conn,
                message_record(self.topic, inbound.partition_key, reply, reply.message_id),
                self.settings.outbox_max_attempts,
            )
            if self.settings.memory_active and reply.model != "none":
                # The exchange is remembered like any other, once it really happened.
                memory = self.journey.memory_for(inbound, reply)
                await self.outbox.add(
                    conn,
                    message_record(
                        self.memory_topic, memory.partition_key, memory, memory.memory_id
                    ),
                    self.settings.outbox_max_attempts,
                )
        self.on_committed()
        return _Pass.SENT

    async def _failed(self, owed: OwedAnswer, exc: Exception, backoff: timedelta) -> None:
        async with self.database.connection() as conn:
            await self.store.failed(conn, owed.key, f"{type(exc).__name__}: {exc}", backoff)

    async def _give_up(
        self, owed: OwedAnswer, inbound: ConversationInbound | None, exc: Exception
    ) -> None:
        """Dead-letter the owed message (to the inbound topic's ``.dlq``) and close its row."""
        value = json.dumps(owed.document).encode()
        key = inbound.partition_key.encode() if inbound is not None else None
        message = InboundMessage(self.inbound_topic, -1, -1, key, value)
        await self.dead_letters.write(
            message, exc, owed.attempts + 1, idempotency_key=f"dlq:deferred:{owed.key}"
        )
        async with self.database.connection() as conn:
            await self.store.gave_up(conn, owed.key, f"{type(exc).__name__}: {exc}")
        logger.warning("gave up a delayed answer: %s", type(exc).__name__)

    async def start(self) -> None:
        """Retry every ``deferred_answer_interval_seconds`` in the process holding the lock."""
        await self.job.start()

    async def stop(self) -> None:
        """Stop retrying and release the lock."""
        await self.job.stop()
