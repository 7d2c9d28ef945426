"""Real answers owed after a degraded reply: retried until a model answers.

When every model of a chain is down the conversation agent replies at once with a clear
degraded reply and records the message in ``deferred_answer``. One answerer per schema
(advisory lock; every worker runs one) retries the oldest owed answers; the real answer
goes out through the outbox in the same transaction that marks it given, so it is sent
once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import psycopg

from core.errors import InfrastructureUnavailableError, TransientError
from core.settings import Settings
from core.topics import CONVERSATION_OUTBOUND, MEMORY_REMEMBER
from journeys.conversation import ConversationJourney
from outbox.database import Database
from outbox.deferred import DeferredAnswerStore
from outbox.store import OutboxStore
from pipeline.records import message_record
from schemas.messages import reply_id_for

__all__ = ["DeferredAnswerer", "answer_id_for"]

logger = logging.getLogger(__name__)


def answer_id_for(message_id: str) -> str:
    """The id of the real answer that follows a degraded reply."""
    return reply_id_for(f"{message_id}#answer")


class DeferredAnswerer:
    """Retries owed answers in the background; constructing it does no I/O."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        journey: ConversationJourney,
        on_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.journey = journey
        self.on_committed = on_committed
        self.store = DeferredAnswerStore()
        self.outbox = OutboxStore()
        self.topic = settings.topic(CONVERSATION_OUTBOUND)
        self.memory_topic = settings.topic(MEMORY_REMEMBER)
        self._task: asyncio.Task[None] | None = None

    async def answer_due(self, limit: int = 50) -> int:
        """One pass (if this process holds the lock): how many real answers were sent."""
        try:
            lock = await psycopg.AsyncConnection.connect(
                self.settings.database_url, autocommit=True, connect_timeout=5
            )
        except psycopg.OperationalError as exc:
            raise InfrastructureUnavailableError("postgres", str(exc)) from exc
        async with lock:
            cur = await lock.execute(
                "SELECT pg_try_advisory_lock(%s)", (self.settings.deferred_answer_lock_key,)
            )
            row = await cur.fetchone()
            if not row or not row[0]:
                return 0
            async with self.database.connection() as conn:
                owed = await self.store.due(conn, limit)
            sent = 0
            for inbound in owed:
                try:
                    reply = await self.journey.answer(
                        inbound, reply_id=answer_id_for(inbound.message_id)
                    )
                except TransientError as exc:
                    async with self.database.connection() as conn:
                        await self.store.failed(
                            conn, inbound.message_id, str(exc), timedelta(seconds=2.0)
                        )
                    break  # the models are still down: try again at the next pass
                reply = reply.model_copy(
                    update={"notices": (*reply.notices, "Answer sent after a delay")}
                )
                async with self.database.connection() as conn, conn.transaction():
                    if not await self.store.answered(conn, inbound.message_id):
                        continue
                    await self.outbox.add(
                        conn,
                        message_record(self.topic, inbound.partition_key, reply, reply.message_id),
                        self.settings.outbox_max_attempts,
                    )
                    if self.settings.memory_active:
                        # The exchange is remembered like any other, once it really happened.
                        memory = self.journey.memory_for(inbound, reply)
                        await self.outbox.add(
                            conn,
                            message_record(
                                self.memory_topic,
                                memory.partition_key,
                                memory,
                                memory.memory_id,
                            ),
                            self.settings.outbox_max_attempts,
                        )
                sent += 1
                self.on_committed()
            return sent

    async def start(self) -> None:
        """Retry every ``deferred_answer_interval_seconds``."""
        self._task = asyncio.create_task(self._run(), name="deferred-answers")

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.answer_due()
                if sent:
                    logger.info("sent %d delayed answers", sent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("delayed answers paused: %s", exc)
            await asyncio.sleep(self.settings.deferred_answer_interval_seconds)

    async def stop(self) -> None:
        """Stop retrying."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
