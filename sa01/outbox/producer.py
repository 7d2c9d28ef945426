"""The resilient producer: Kafka when it answers, the PostgreSQL outbox when it does not.

Contract of :meth:`ResilientProducer.send`: it returns only after Kafka acknowledged
the record (``acks=all``, idempotent producer) or after the record was committed to
``outbox_message``, from which the relay publishes it. When neither Kafka nor
PostgreSQL takes the record it raises :class:`ProducerUnavailableError` and the caller
keeps its message.

The Kafka gate is a :class:`~resilience.circuit_breaker.CircuitBreaker` named
:data:`PRODUCER_GATE` (``kafka:producer``), registered by the worker in its breaker
registry, so ``/circuits``, the metrics and the ``circuit`` command show it. It opens

* at once on librdkafka's all-brokers-down or transport error event (``error_cb``), or
  on a delivery report failed for the same reason or for a partition without a leader
  (a broker's controlled shutdown can fail records so before its connection drops),
* on the health monitor's ``unavailable`` verdict for Kafka (the monitor trips it),
* after ``SA01_PRODUCER_CIRCUIT_FAILURES`` failed deliveries in a row,
* or by an operator (``circuit open kafka:producer``).

While it is open a send writes the outbox at once (one INSERT, about a millisecond).
After ``SA01_PRODUCER_CIRCUIT_OPEN_SECONDS`` the next send is a trial through Kafka;
its delivery report closes or reopens the gate.

The budget: no send waits more than ``SA01_PRODUCER_SEND_BUDGET_SECONDS`` (50 ms) for
Kafka once the producer is warm. Until its first acknowledgement (the connection to the
partition leader and the idempotent producer id still being set up: with TLS and SASL
that is two handshakes), a send whose broker answered the start's metadata request waits
up to :data:`WARM_UP_SECONDS` instead; a broker that did not answer at start leaves the
normal budget in force. A record Kafka has not acknowledged by then (or when the gate
opens meanwhile) is written to the outbox and the send returns; librdkafka keeps the record and may
still deliver it, so the record can arrive twice. Delivery is therefore at-least-once
and consumers deduplicate by the ``idempotency-key`` header (docs/guarantees.md). If
the outbox is down at that moment, the send keeps waiting for Kafka's delivery report
(bounded by ``SA01_PRODUCER_SEND_TIMEOUT_SECONDS``) before giving up. The gate is moved
by delivery reports only, never by the budget: a slow but working broker costs
duplicates, not an open gate.

librdkafka's callbacks run on a polling thread and hand their results to the event
loop through ``call_soon_threadsafe``; the breaker is only touched on the loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sa01.core.errors import InfrastructureUnavailableError
from sa01.core.kafka_security import librdkafka_config
from sa01.core.logging import librdkafka_logger
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.store import OutboxRecord, OutboxStore
from sa01.resilience.circuit_breaker import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    Permit,
)

__all__ = [
    "PRODUCER_GATE",
    "DeliveryPath",
    "FallbackReason",
    "ProducerUnavailableError",
    "ResilientProducer",
    "SendResult",
    "gate_config",
]

logger = logging.getLogger(__name__)

PRODUCER_GATE = "kafka:producer"
"""The name of the resilient producer's Kafka gate in the breaker registry."""

#: The longest :meth:`ResilientProducer.start` waits for the cluster's metadata.
WARM_UP_SECONDS = 5.0

#: librdkafka events that say the broker connection is gone: open the gate at once.
_BROKER_DOWN = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})

#: Failed deliveries that say the same (or that the partition has no leader to take the
#: record): they open the gate at once too, rather than counting towards
#: ``SA01_PRODUCER_CIRCUIT_FAILURES``. A broker's controlled shutdown can fail records
#: this way before the connection drops.
_BROKER_DOWN_DELIVERY = _BROKER_DOWN | {
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
}

#: Errors of the record itself (the caller's mistake): they never count against the gate.
_RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError._INVALID_ARG,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)


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


class FallbackReason(enum.StrEnum):
    """Why a record went to the outbox."""

    GATE_OPEN = "gate_open"
    """The gate was open when the send began: no Kafka attempt."""
    GATE_OPENED = "gate_opened"
    """The gate opened while the send waited for Kafka."""
    BUDGET = "budget"
    """Kafka had not acknowledged within the send budget."""
    DELIVERY_FAILED = "delivery_failed"
    """librdkafka refused the record or reported its delivery failed."""


@dataclass(frozen=True)
class SendResult:
    """How a record was made durable."""

    path: DeliveryPath
    partition: int | None = None
    offset: int | None = None
    fallback: FallbackReason | None = None
    """Why the outbox was used (``None`` on the Kafka path)."""


def gate_config(settings: Settings) -> BreakerConfig:
    """The Kafka gate: consecutive failed deliveries, a fixed wait, one trial send."""
    failures = settings.producer_circuit_failures
    wait = settings.producer_circuit_open_seconds
    timeout = settings.producer_send_timeout_seconds
    return BreakerConfig(
        window_type="count",
        window_size=failures,
        minimum_calls=failures,
        failure_rate_threshold=100.0,
        slow_call_rate_threshold=100.0,
        slow_call_duration=timeout + 5.0,
        consecutive_failures_threshold=failures,
        permitted_calls_in_half_open=1,
        wait_in_open=wait,
        wait_backoff_multiplier=1.0,
        max_wait_in_open=wait,
        wait_jitter=0.0,
        # The trial's delivery report comes within the message timeout; never stay
        # half-open longer than that if it is somehow lost.
        max_wait_in_half_open=timeout + 5.0,
    )


#: What a waiting send learns: the acknowledged message, or why to use the outbox.
_Outcome = Message | tuple[FallbackReason, str]


class ResilientProducer:
    """Produces records durably; construct, :meth:`start`, :meth:`send`, :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        metrics: Metrics,
        *,
        on_outbox_write: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.metrics = metrics
        self.store = OutboxStore()
        self.on_outbox_write = on_outbox_write
        self.gate = CircuitBreaker(
            PRODUCER_GATE,
            gate_config(settings),
            metrics=metrics,
            listeners=[self._on_gate_transition],
        )
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._waiting: set[asyncio.Future[_Outcome]] = set()
        #: The budget a send waits for Kafka: longer until the first acknowledgement.
        self._budget = settings.producer_send_budget_seconds

    async def start(self) -> None:
        """Create the producer and its polling thread, then connect (bounded).

        The send budget is for outages, not for a cold connection: a first send would
        otherwise always spend it on the TCP, TLS and SASL handshakes and fall back to the
        outbox. Start waits for the cluster's metadata at most :data:`WARM_UP_SECONDS`
        (or the send timeout, if shorter); a broker that does not answer by then trips the
        gate through librdkafka's own error event, and the sends go to the outbox at once.
        """
        self._loop = asyncio.get_running_loop()
        self._producer = Producer(
            {
                **librdkafka_config(self.settings),
                "enable.idempotence": True,
                "acks": "all",
                # No linger: a send waits for its own ack; concurrent sends still batch.
                "linger.ms": 0,
                "logger": librdkafka_logger(),
                "error_cb": self._on_kafka_error,
                # A broker closing an idle connection is not an outage: no error event.
                "log.connection.close": False,
                "message.max.bytes": self.settings.kafka_max_message_bytes + 65_536,
                "message.timeout.ms": int(self.settings.producer_send_timeout_seconds * 1000),
                "socket.timeout.ms": 5000,
                "reconnect.backoff.max.ms": 1000,
            }
        )
        self._stopping.clear()
        self._poller = threading.Thread(target=self._poll, name="resilient-producer", daemon=True)
        self._poller.start()
        await self._warm_up(self._producer)

    async def _warm_up(self, producer: Producer) -> None:
        timeout = min(WARM_UP_SECONDS, self.settings.producer_send_timeout_seconds)
        try:
            await asyncio.to_thread(producer.list_topics, None, timeout)
        except KafkaException as exc:
            logger.warning("Kafka did not answer at start", extra={"error": str(exc.args[0])})
            self._budget = self.settings.producer_send_budget_seconds
        else:
            # The broker answers; the first sends still pay for the leader's connection.
            self._budget = max(self.settings.producer_send_budget_seconds, timeout)

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
        if self._producer is None or self._loop is None:
            raise RuntimeError("ResilientProducer.send before start()")
        permit = self.gate.acquire_permit()
        if permit is None:
            return await self._to_outbox(record, FallbackReason.GATE_OPEN, "the Kafka gate is open")
        loop = self._loop
        delivered: asyncio.Future[_Outcome] = loop.create_future()
        ready: asyncio.Future[_Outcome] = loop.create_future()

        def on_delivery(err: KafkaError | None, message: Message) -> None:
            self._call_soon(self._settle, permit, delivered, ready, err, message)

        try:
            self._producer.produce(
                record.topic,
                value=record.value,
                key=record.key,
                headers=list(record.headers.items()),
                on_delivery=on_delivery,
            )
        except Exception as exc:  # BufferError (queue full), KafkaException (bad record), ...
            cause = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
            if isinstance(cause, KafkaError) and cause.code() in _RECORD_ERRORS:
                permit.release()
            else:
                permit.failure()
            reason = f"{type(exc).__name__}: {exc}"
            return await self._to_outbox(record, FallbackReason.DELIVERY_FAILED, reason)
        self._waiting.add(ready)
        budget = loop.call_later(
            self._budget,
            _resolve,
            ready,
            (FallbackReason.BUDGET, "no acknowledgement from Kafka within the send budget"),
        )
        try:
            outcome = await ready
        finally:
            budget.cancel()
            self._waiting.discard(ready)
        if isinstance(outcome, Message):
            return SendResult(DeliveryPath.KAFKA, outcome.partition(), outcome.offset())
        reason, detail = outcome
        try:
            return await self._to_outbox(record, reason, detail)
        except ProducerUnavailableError:
            if not delivered.done():
                pass
            elif isinstance(arrived := delivered.result(), Message):
                return SendResult(DeliveryPath.KAFKA, arrived.partition(), arrived.offset())
            else:
                raise
        # The outbox is down but Kafka may still take the record: wait for its report.
        logger.warning("outbox unavailable: waiting for Kafka's report on %s", record.topic)
        grace = self.settings.producer_send_timeout_seconds + 5.0
        try:
            late = await asyncio.wait_for(asyncio.shield(delivered), grace)
        except TimeoutError:
            late = (FallbackReason.DELIVERY_FAILED, "no delivery report before the send timeout")
        if isinstance(late, Message):
            return SendResult(DeliveryPath.KAFKA, late.partition(), late.offset())
        return await self._to_outbox(record, late[0], late[1])

    # --------------------------------------------------------------- librdkafka events
    def _call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback`` on the loop (from librdkafka's polling thread)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _on_kafka_error(self, err: KafkaError) -> None:
        """``error_cb`` (polling thread): a broker-down event opens the gate at once."""
        if err.code() in _BROKER_DOWN or err.fatal():
            self._call_soon(self.trip, f"librdkafka: {err.name()}: {err.str()}")
        else:
            logger.info("librdkafka error event: %s", err)

    def trip(self, reason: str) -> None:
        """Open the gate now (a broker-down event or the monitor's verdict)."""
        self.gate.trip(reason)

    def _on_gate_transition(self, event: BreakerTransition) -> None:
        """The gate opened: every send still waiting for Kafka goes to the outbox now."""
        if event.to_state not in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
            return
        for ready in tuple(self._waiting):
            _resolve(ready, (FallbackReason.GATE_OPENED, f"the Kafka gate opened ({event.reason})"))

    def _settle(
        self,
        permit: Permit,
        delivered: asyncio.Future[_Outcome],
        ready: asyncio.Future[_Outcome],
        err: KafkaError | None,
        message: Message,
    ) -> None:
        """A delivery report, on the loop: move the gate, wake the send."""
        self._judge(permit, err, message)
        if err is None:
            self._budget = self.settings.producer_send_budget_seconds  # warm from now on
        outcome: _Outcome = message if err is None else (FallbackReason.DELIVERY_FAILED, str(err))
        _resolve(delivered, outcome)
        _resolve(ready, outcome)

    def _judge(self, permit: Permit, err: KafkaError | None, message: Message) -> None:
        if err is None:
            permit.success()
            return
        if err.code() in _RECORD_ERRORS:
            permit.release()  # the record's own fault says nothing about the broker
            return
        logger.warning(
            "delivery to %s [%s] failed: %s: %s",
            message.topic(),
            message.partition(),
            err.name(),
            err.str(),
        )
        if err.code() in _BROKER_DOWN_DELIVERY:
            self.trip(f"librdkafka: delivery failed: {err.name()}: {err.str()}")
        permit.failure()

    async def _to_outbox(
        self, record: OutboxRecord, reason: FallbackReason, detail: str
    ) -> SendResult:
        try:
            async with self.database.connection() as conn:
                await self.store.add(conn, record, self.settings.outbox_max_attempts)
        except InfrastructureUnavailableError as exc:
            raise ProducerUnavailableError(detail, exc.detail) from exc
        logger.info("record %s kept in the outbox: %s", record.idempotency_key, detail)
        if self.on_outbox_write is not None:
            self.on_outbox_write()
        return SendResult(DeliveryPath.OUTBOX, fallback=reason)


def _resolve(future: asyncio.Future[_Outcome], outcome: _Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
