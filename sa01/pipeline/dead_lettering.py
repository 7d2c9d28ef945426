"""Dead-lettering of an inbound record: the outbox row to ``<topic>.dlq`` and the table row.

Both are written by the one dead-letter writer (:meth:`DeadLetterStore.record`) in one
PostgreSQL transaction keyed by the record's position, so a record processed again
after a crash is not dead-lettered twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import dlq
from sa01.outbox.database import Database
from sa01.outbox.dead_letter_store import DeadLetter, DeadLetterStore
from schemas.headers import ERRORS_EXCEPTION, ERRORS_MESSAGE, MAX_ERROR_TEXT, dead_letter_headers

__all__ = ["DeadLetterWriter", "InboundMessage"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundMessage:
    """One Kafka record as taken from an input topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def position(self) -> str:
        """``topic:partition:offset``, unique per record."""
        return f"{self.topic}:{self.partition}:{self.offset}"


class DeadLetterWriter:
    """Writes dead letters of inbound records (raises InfrastructureUnavailableError)."""

    def __init__(self, settings: Settings, database: Database, metrics: Metrics) -> None:
        self.settings = settings
        self.database = database
        self.metrics = metrics
        self.store = DeadLetterStore()

    async def write(
        self,
        message: InboundMessage,
        error: BaseException,
        attempts: int,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        """Dead-letter ``message`` once (per ``idempotency_key``, by default its position);
        True when this call wrote it."""
        idempotency_key = idempotency_key or f"dlq:{message.position}"
        headers = dead_letter_headers(
            error,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            attempts=attempts,
            idempotency_key=idempotency_key,
        )
        value = message.value if message.value is not None else b""
        async with self.database.connection() as conn:
            inserted = await self.store.record(
                conn,
                DeadLetter(
                    idempotency_key=idempotency_key,
                    source="agent",
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                    payload=value,
                    headers=headers,
                    error_class=headers[ERRORS_EXCEPTION],
                    error_message=str(error)[:MAX_ERROR_TEXT],
                    attempts=attempts,
                ),
                outbox_key=idempotency_key,
                max_attempts=self.settings.outbox_max_attempts,
            )
        if inserted:
            self.metrics.dlq_messages_total.labels(topic=dlq(message.topic)).inc()
            logger.warning(
                "dead-lettered a record",
                extra={
                    "position": message.position,
                    "attempts": attempts,
                    "error_type": headers[ERRORS_EXCEPTION],
                    "error": headers[ERRORS_MESSAGE],
                },
            )
        return inserted
