"""The resilient producer: Kafka when it answers, the PostgreSQL outbox when it does not.

Contract of :meth:`ResilientProducer.send`: it returns only after Kafka acknowledged
the record (``acks=all``, idempotent producer) or after the record was committed to
``outbox_message``, from which the relay publishes it. With the Kafka circuit open it
writes the outbox at once, without waiting on timeouts. A record whose delivery fails
after librdkafka accepted it is written to the outbox, not dropped. When neither Kafka
nor PostgreSQL takes the record it raises :class:`ProducerUnavailableError` and the
caller keeps its message. Delivery is at-least-once (a record that timed out in flight
may also have arrived); consumers deduplicate by the ``idempotency-key`` header.

librdkafka's callbacks run on a polling thread and resolve asyncio futures through
``call_soon_threadsafe``; nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from sa01.core.errors import InfrastructureUnavailableError
from sa01.core.kafka_security import librdkafka_config
from sa01.core.logging import librdkafka_logger
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.store import OutboxRecord, OutboxStore

__all__ = ["DeliveryPath", "ProducerUnavailableError", "ResilientProducer", "SendResult"]

logger = logging.getLogger(__name__)


class ProducerUnavailableError(InfrastructureUnavailableError):
    """Neither Kafka nor the PostgreSQL outbox accepted the record: the caller keeps it."""

    def __init__(self, kafka_error: str, database_error: str) -> None:
        super().__init__(
            "kafka+postgres",
            f"Kafka refused the record ({kafka_error}) and the outbox is unavailable "
            f"({database_error}); the record was not stored",
        )


class DeliveryPath(enum.StrEnum):
    """Where an acknowledged record went."""

    KAFKA = "kafka"
    OUTBOX = "outbox"


@dataclass(frozen=True)
class SendResult:
    """How a record was made durable."""

    path: DeliveryPath
    partition: int | None = None
    offset: int | None = None


class _KafkaCircuit:
    """A small consecutive-failure gate for the broker (full breakers live in resilience/)."""

    def __init__(self, threshold: int, open_seconds: float) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.failures = 0
        self.open_until = 0.0

    def permits(self) -> bool:
        return time.monotonic() >= self.open_until

    def success(self) -> None:
        self.failures = 0

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.open_seconds


class ResilientProducer:
    """Produces records durably; construct, :meth:`start`, :meth:`send`, :meth:`stop`."""

    def __init__(self, settings: Settings, database: Database, metrics: Metrics) -> None:
        self.settings = settings
        self.database = database
        self.metrics = metrics
        self.store = OutboxStore()
        self.circuit = _KafkaCircuit(
            settings.producer_circuit_failures, settings.producer_circuit_open_seconds
        )
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self.on_outbox_write: Any = None

    async def start(self) -> None:
        """Create the producer and its polling thread (no network round trip)."""
        self._producer = Producer(
            {
                **librdkafka_config(self.settings),
                "enable.idempotence": True,
                "acks": "all",
                # No linger: a send waits for its own ack; concurrent sends still batch.
                "linger.ms": 0,
                "logger": librdkafka_logger(),
                "message.max.bytes": self.settings.kafka_max_message_bytes + 65_536,
                "message.timeout.ms": int(self.settings.producer_send_timeout_seconds * 1000),
                "socket.timeout.ms": 5000,
                "reconnect.backoff.max.ms": 1000,
            }
        )
        self._stopping.clear()
        self._poller = threading.Thread(target=self._poll, name="resilient-producer", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        producer = self._producer
        while producer is not None and not self._stopping.is_set():
            producer.poll(0.1)

    async def stop(self) -> None:
        """Flush what is in flight (bounded), then stop polling."""
        producer = self._producer
        if producer is not None:
            await asyncio.to_thread(producer.flush, self.settings.producer_send_timeout_seconds)
        self._stopping.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5)
        self._producer = None

    async def send(self, record: OutboxRecord) -> SendResult:
        """Make ``record`` durable in Kafka or in the outbox (see the module docstring)."""
        if self._producer is None:
            raise RuntimeError("ResilientProducer.send before start()")
        if not self.circuit.permits():
            return await self._to_outbox(record, "the Kafka circuit is open")
        try:
            message = await self._to_kafka(record)
        except _DeliveryFailed as failed:
            self.circuit.failure()
            return await self._to_outbox(record, failed.reason)
        self.circuit.success()
        return SendResult(DeliveryPath.KAFKA, message.partition(), message.offset())

    async def _to_kafka(self, record: OutboxRecord) -> Message:
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, message: Message) -> None:
            def settle() -> None:
                if delivered.done():
                    return
                if err is not None:
                    delivered.set_exception(_DeliveryFailed(str(err)))
                else:
                    delivered.set_result(message)

            loop.call_soon_threadsafe(settle)

        try:
            self._producer.produce(
                record.topic,
                value=record.value,
                key=record.key,
                headers=list(record.headers.items()),
                on_delivery=on_delivery,
            )
        except (BufferError, Exception) as exc:  # queue full, unknown topic, ...
            raise _DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        grace = self.settings.producer_send_timeout_seconds + 5.0
        try:
            return await asyncio.wait_for(delivered, grace)
        except TimeoutError as exc:
            raise _DeliveryFailed("no delivery report before the send timeout") from exc

    async def _to_outbox(self, record: OutboxRecord, kafka_error: str) -> SendResult:
        try:
            async with self.database.connection() as conn:
                await self.store.add(conn, record, self.settings.outbox_max_attempts)
        except InfrastructureUnavailableError as exc:
            raise ProducerUnavailableError(kafka_error, exc.detail) from exc
        logger.info("record %s kept in the outbox: %s", record.idempotency_key, kafka_error)
        if self.on_outbox_write is not None:
            self.on_outbox_write()
        return SendResult(DeliveryPath.OUTBOX)


class _DeliveryFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
