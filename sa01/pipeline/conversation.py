"""Processing of ``conversation.inbound``: decode, deduplicate, answer, commit, ack.

Guarantees (see docs/guarantees.md):

* Bad input never stops the stream: bytes that are not JSON or fail the schema, and
  messages whose processing raises a :class:`PermanentError`, are dead-lettered at
  once; any other error is retried with backoff and dead-lettered after
  ``processing_max_attempts``. Dead letters keep the original bytes and key.
* The reply, the memory and the upload tasks are written to PostgreSQL in one
  transaction with the idempotency record (the outbox); the relay publishes them
  exactly once. A second copy of a ``message_id`` finds its record and produces
  nothing. Messages answered together share that transaction, and their idempotency
  pre-checks share one lookup (:mod:`sa01.pipeline.group_commit`); a message whose rows
  fail in a shared transaction is committed alone, and dead-lettered when they fail
  again, without holding back the others.
* While PostgreSQL is unreachable the message waits (it is neither acked nor
  dead-lettered): nothing is lost, and the offset is never committed past it. An
  outage met while answering is waited out by ``retry_while_unavailable``
  (sa01.resilience.retry: exponential backoff with jitter, capped at
  ``infrastructure_retry_max_seconds``); it does not count as a failed attempt.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sa01.core.errors import (
    CallerError,
    FallbackExhaustedError,
    InfrastructureUnavailableError,
    PermanentError,
    SchemaMissingError,
)
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import CONVERSATION_OUTBOUND, MEMORY_REMEMBER, UPLOAD_RETRY
from sa01.journeys.attachments import AttachmentOutcome, AttachmentStorer
from sa01.journeys.conversation import ConversationJourney
from sa01.outbox.database import Database
from sa01.outbox.idempotency import EncodedJson
from sa01.outbox.store import OutboxRecord
from sa01.pipeline.consuming import RecordGuard
from sa01.pipeline.dead_lettering import DeadLetterWriter, InboundMessage
from sa01.pipeline.group_commit import Answered, GroupCommitter
from sa01.pipeline.records import message_record
from sa01.resilience.retry import Backoff, retry_while_unavailable, sleep_unless
from schemas.codec import decode_message
from schemas.messages import ConversationInbound, ConversationReply, scoped_key

__all__ = ["ConversationProcessor", "InboundMessage", "Outcome"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Outcome(enum.StrEnum):
    """What became of a message (the label of ``conversation_messages_total``)."""

    REPLIED = "replied"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    DEGRADED = "degraded"


class ConversationProcessor:
    """Processes one inbound message to its end; :meth:`process` never raises."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        journey: ConversationJourney,
        metrics: Metrics,
        on_committed: Callable[[], None] = lambda: None,
        attachments: AttachmentStorer | None = None,
    ) -> None:
        self.settings = settings
        self.attachments = attachments
        self.upload_topic = settings.topic(UPLOAD_RETRY)
        self.database = database
        self.journey = journey
        self.metrics = metrics
        self.on_committed = on_committed
        self.outbound_topic = settings.topic(CONVERSATION_OUTBOUND)
        self.memory_topic = settings.topic(MEMORY_REMEMBER)
        self.committer = GroupCommitter(settings, database, metrics, on_committed)
        self.dead_letters = DeadLetterWriter(settings, database, metrics)
        self.guard = RecordGuard("conversation", settings, self.dead_letters, metrics, on_committed)
        limit = settings.infrastructure_retry_max_seconds
        self.backoff = Backoff(initial=min(0.2, limit), maximum=limit)
        self.sleep = sleep_unless  # injectable, for tests

    @staticmethod
    def decode(message: InboundMessage) -> ConversationInbound:
        """The validated message, or a :class:`PermanentError` saying what is wrong."""
        return decode_message(ConversationInbound, message.value)

    async def process(self, message: InboundMessage) -> str:
        """Process ``message`` to one outcome; waits while PostgreSQL is unreachable."""
        started = time.monotonic()
        self.metrics.messages_in_flight.inc()
        try:
            outcome = await self._process(message)
        except (asyncio.CancelledError, SchemaMissingError):
            raise  # the tables are gone: the worker stops (one report, nothing acked)
        except Exception as exc:  # a bug: keep the stream going, keep the message
            logger.exception("unexpected error processing %s", message.position)
            outcome = await self._retry_infrastructure(self._dead_letter, message, exc, 1)
        finally:
            self.metrics.messages_in_flight.dec()
        self.metrics.messages_processed_total.labels(outcome=outcome).inc()
        self.metrics.processing_seconds.observe(time.monotonic() - started)
        return outcome

    async def _process(self, message: InboundMessage) -> str:
        try:
            inbound = self.decode(message)
        except PermanentError as exc:
            return await self._retry_infrastructure(self._dead_letter, message, exc, 1)
        key = scoped_key(message.topic, inbound.tenant_id, inbound.message_id)
        if await self._retry_infrastructure(self._already_processed, key):
            return Outcome.DUPLICATE
        stored = AttachmentOutcome()
        if self.attachments is not None and inbound.attachments:
            stored = await self.attachments.store(inbound)
        attempts = 0
        remember = True
        while True:
            attempts += 1
            try:
                reply = await retry_while_unavailable(
                    lambda: self._answer(inbound),
                    backoff=self.backoff,
                    what=f"answering {message.position}",
                    sleep=self.sleep,
                )
                break
            except CallerError as exc:
                # The message itself is at fault: answer it with a notice that says so.
                logger.info("message refused by the model: %s", type(exc).__name__)
                self.metrics.caller_errors_total.labels(kind=type(exc).__name__).inc()
                reply = self.journey.refusal(inbound, exc)
                remember = False
                break
            except FallbackExhaustedError as exc:
                if not self.settings.llm_degraded_reply:
                    if attempts >= self.settings.processing_max_attempts:
                        return await self._retry_infrastructure(
                            self._dead_letter, message, exc, attempts
                        )
                    await asyncio.sleep(
                        self.settings.processing_retry_backoff_seconds * 2 ** (attempts - 1)
                    )
                    continue
                logger.warning("every model is down: degraded reply to %s", inbound.message_id)
                return await self._retry_infrastructure(self._commit_degraded, key, inbound, stored)
            except Exception as exc:
                permanent = isinstance(exc, PermanentError)
                if permanent or attempts >= self.settings.processing_max_attempts:
                    return await self._retry_infrastructure(
                        self._dead_letter, message, exc, attempts
                    )
                delay = self.settings.processing_retry_backoff_seconds * 2 ** (attempts - 1)
                logger.warning(
                    "processing %s failed (attempt %d): %s", message.position, attempts, exc
                )
                await asyncio.sleep(delay)
        return await self._retry_infrastructure(
            self._commit_reply, key, inbound, _with_uploads(reply, stored), stored, remember
        )

    # ------------------------------------------------------------- persistence
    async def close(self) -> None:
        """Wait for the commits already handed over (at shutdown, before the pool closes)."""
        await self.committer.close()

    async def _already_processed(self, key: str) -> bool:
        return await self.committer.answered(key)

    async def _commit_reply(
        self,
        key: str,
        inbound: ConversationInbound,
        reply: ConversationReply,
        stored: AttachmentOutcome,
        remember: bool = True,
    ) -> Outcome:
        reply_record = self._reply_record(inbound, reply)
        records = [reply_record, *self._upload_records(stored)]
        if self.settings.memory_active and remember:
            memory = self.journey.memory_for(inbound, reply)
            records.append(
                message_record(self.memory_topic, memory.partition_key, memory, memory.memory_id)
            )
        if not await self.committer.commit(
            Answered(key, EncodedJson(reply_record.value.decode()), tuple(records))
        ):
            return Outcome.DUPLICATE
        return Outcome.REPLIED

    async def _commit_degraded(
        self, key: str, inbound: ConversationInbound, stored: AttachmentOutcome
    ) -> Outcome:
        reply = _with_uploads(self.journey.degraded_reply(inbound), stored)
        reply_record = self._reply_record(inbound, reply)
        records = (reply_record, *self._upload_records(stored))
        if not await self.committer.commit(
            Answered(key, EncodedJson(reply_record.value.decode()), records, owed=inbound)
        ):
            return Outcome.DUPLICATE
        return Outcome.DEGRADED

    def _reply_record(self, inbound: ConversationInbound, reply: ConversationReply) -> OutboxRecord:
        return message_record(self.outbound_topic, inbound.partition_key, reply, reply.message_id)

    def _upload_records(self, stored: AttachmentOutcome) -> list[OutboxRecord]:
        return [
            message_record(self.upload_topic, task.upload_id, task, task.upload_id)
            for task in stored.tasks
        ]

    async def _dead_letter(self, message: InboundMessage, error: Exception, attempts: int) -> str:
        await self.guard.dead_letter(message, error, attempts)
        return Outcome.DEAD_LETTERED

    # ------------------------------------------------------------------ waiting
    async def _retry_infrastructure(
        self, operation: Callable[..., Awaitable[T]], *args: object
    ) -> T:
        """Run ``operation`` until the infrastructure lets it finish (the shared guard's)."""
        return await self.guard.wait_for(operation, *args)

    async def _answer(self, inbound: ConversationInbound) -> ConversationReply:
        """The journey's answer; an outage is counted (the retry helper waits it out)."""
        try:
            return await self.journey.answer(inbound)
        except InfrastructureUnavailableError as exc:
            self.metrics.infrastructure_retries_total.labels(service=exc.service).inc()
            raise


def _with_uploads(reply: ConversationReply, stored: AttachmentOutcome) -> ConversationReply:
    """``reply`` with the notices and degraded services of storing the attachments."""
    if not stored.notices and not stored.degraded:
        return reply
    return reply.model_copy(
        update={
            "degraded": tuple(sorted({*reply.degraded, *stored.degraded})),
            "notices": (*reply.notices, *stored.notices),
        }
    )
