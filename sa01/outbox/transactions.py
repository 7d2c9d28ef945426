"""Kafka transactions of the relay (confluent-kafka), off the event loop.

A batch of outbox rows and one ledger record are produced in one transaction. The
outcome is ``committed``, ``aborted`` (known not to be visible; per-row errors are
reported) or ``unknown`` (the producer must be re-initialised and the ledger read
to learn what happened). librdkafka's blocking calls run in one dedicated thread.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar, TypeVarTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sa01.core.errors import InfrastructureUnavailableError
from sa01.core.kafka_security import librdkafka_config
from sa01.core.logging import librdkafka_logger
from sa01.core.settings import Settings
from sa01.outbox.store import ClaimedRow

__all__ = ["ROW_SPECIFIC_ERRORS", "BatchOutcome", "BatchResult", "TransactionalPublisher"]

logger = logging.getLogger(__name__)

R = TypeVar("R")
Args = TypeVarTuple("Args")

#: Errors caused by the record itself: they count an attempt against its row.
ROW_SPECIFIC_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.POLICY_VIOLATION,
        KafkaError._INVALID_ARG,
    }
)


class BatchOutcome(enum.Enum):
    """What became of one transaction."""

    COMMITTED = "committed"
    ABORTED = "aborted"
    UNKNOWN = "unknown"


@dataclass
class BatchResult:
    """The outcome of one transaction and the errors seen on the way."""

    outcome: BatchOutcome
    row_errors: dict[int, KafkaError] = field(default_factory=dict)
    error: str | None = None


#: How long one ``commit_transaction`` call may block before closing is checked again.
COMMIT_SLICE_SECONDS = 1.0


@dataclass(frozen=True)
class LedgerRecord:
    """The record written with every batch: which relay committed which sequence."""

    topic: str
    key: bytes
    value: bytes


class TransactionalPublisher:
    """One transactional confluent-kafka producer; constructing it does no I/O."""

    def __init__(self, settings: Settings, transactional_id: str) -> None:
        self.settings = settings
        self.transactional_id = transactional_id
        self._producer: Producer | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox-txn")
        self._closing = threading.Event()
        #: Failed deliveries of the batch being published (librdkafka reports only those).
        self._failed: list[tuple[KafkaError, Message]] = []

    def _config(self) -> dict[str, object]:
        timeout_ms = int(self.settings.relay_transaction_timeout_seconds * 1000)
        return {
            **librdkafka_config(self.settings),
            "transactional.id": self.transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "logger": librdkafka_logger(),
            # One report callback for the producer, called for failed records only: no
            # callback object per record, and none called for the thousands that succeed.
            "on_delivery": self._on_failed_delivery,
            "delivery.report.only.error": True,
            "message.max.bytes": self.settings.kafka_max_message_bytes + 65_536,
            "compression.type": "lz4",
            "transaction.timeout.ms": max(timeout_ms * 2, 60_000),
            "message.timeout.ms": timeout_ms,
            "socket.timeout.ms": 10_000,
            # librdkafka's default backs off up to 10 s between reconnects: after an outage
            # the relay would sit that long beside a broker that is back.
            "reconnect.backoff.max.ms": 1000,
            "topic.metadata.propagation.max.ms": 5_000,
            "queue.buffering.max.messages": 200_000,
            # Connect to every broker the metadata names at once: with sparse connections
            # init_transactions found no connected broker to ask for the coordinator one
            # time in three, and waited for librdkafka's 500 ms coordinator query timer.
            "enable.sparse.connections": False,
        }

    async def _call(self, fn: Callable[[*Args], R], *args: *Args) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        """Create the producer and initialise transactions (fences an older holder).

        Raises :class:`InfrastructureUnavailableError` when the broker does not answer.
        """
        await self._call(self._start_blocking)

    def _start_blocking(self) -> None:
        producer = Producer(self._config())
        try:
            producer.init_transactions(self.settings.relay_transaction_timeout_seconds)
        except KafkaException as exc:
            raise InfrastructureUnavailableError(
                "kafka",
                f"Kafka at {self.settings.kafka_bootstrap_servers} did not initialise "
                f"transactions for {self.transactional_id}: {exc.args[0]}",
            ) from exc
        self._producer = producer

    async def restart(self) -> None:
        """Drop the producer and initialise a new one: resolves an uncertain transaction."""
        await self._call(self._close_blocking)
        await self._call(self._start_blocking)

    async def close(self) -> None:
        """Drop the producer (an open transaction is aborted by the broker later).

        A commit in flight gives up within :data:`COMMIT_SLICE_SECONDS` instead of holding
        the stop for the whole ``SA01_RELAY_TRANSACTION_TIMEOUT_SECONDS`` (a topic deleted
        under it never completes); its transaction stays open until the broker aborts it
        or the next holder of the transactional id fences it.
        """
        self._closing.set()
        await self._call(self._close_blocking)
        self._executor.shutdown(wait=False)

    def _close_blocking(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(0)

    async def publish(self, rows: list[ClaimedRow], ledger: LedgerRecord) -> BatchResult:
        """Publish ``rows`` and ``ledger`` atomically; never raises for Kafka errors."""
        return await self._call(self._publish_blocking, rows, ledger)

    def _on_failed_delivery(self, err: KafkaError | None, message: Message) -> None:
        """librdkafka's report of a failed record (in the publishing thread)."""
        if err is not None:
            self._failed.append((err, message))

    def _publish_blocking(self, rows: list[ClaimedRow], ledger: LedgerRecord) -> BatchResult:
        producer = self._producer
        if producer is None:
            return BatchResult(BatchOutcome.UNKNOWN, error="producer is not started")
        self._failed = []
        try:
            producer.begin_transaction()
        except KafkaException as exc:
            return BatchResult(BatchOutcome.UNKNOWN, error=str(exc.args[0]))
        try:
            for row in rows:
                self._produce(producer, row)
            producer.produce(ledger.topic, value=ledger.value, key=ledger.key)
            self._commit(producer)
            return BatchResult(BatchOutcome.COMMITTED)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            return self._abort(producer, error, rows)
        except _RowRejected as rejected:
            return self._abort(producer, rejected.error, rows, {rejected.row_id: rejected.error})

    def _row_errors(self, rows: list[ClaimedRow]) -> dict[int, KafkaError]:
        """The failed reports so far, by row id. A report names its record's topic, key and
        value, not its row: a row is found by those (identical rows share the error)."""
        if not self._failed:
            return {}
        by_record: dict[tuple[str, bytes | None, bytes], list[int]] = {}
        for row in rows:
            by_record.setdefault((row.topic, row.key, row.value), []).append(row.id)
        errors: dict[int, KafkaError] = {}
        for err, message in self._failed:
            record = (message.topic() or "", message.key(), message.value() or b"")
            for row_id in by_record.get(record, ()):
                errors[row_id] = err
        return errors

    @staticmethod
    def _produce(producer: Producer, row: ClaimedRow) -> None:
        while True:
            try:
                producer.produce(
                    row.topic,
                    value=row.value,
                    key=row.key,
                    headers=list(row.headers.items()),
                )
                return
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                raise _RowRejected(row.id, exc.args[0]) from exc

    def _commit(self, producer: Producer) -> None:
        """``commit_transaction`` in slices, so that :meth:`close` is not held behind it.

        librdkafka lets a timed-out commit be called again (the error is retriable); past
        the whole timeout, or once closing, the last error is raised.
        """
        deadline = time.monotonic() + self.settings.relay_transaction_timeout_seconds
        while True:
            left = deadline - time.monotonic()
            try:
                producer.commit_transaction(max(min(COMMIT_SLICE_SECONDS, left), 0.001))
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or self._closing.is_set() or left <= COMMIT_SLICE_SECONDS:
                    raise

    def _abort(
        self,
        producer: Producer,
        error: KafkaError,
        rows: list[ClaimedRow],
        rejected: dict[int, KafkaError] | None = None,
    ) -> BatchResult:
        """Abort the transaction; the result names the rows whose records failed."""
        result = self._abort_transaction(producer, error)
        result.row_errors = {**self._row_errors(rows), **(rejected or {})}
        return result

    def _abort_transaction(self, producer: Producer, error: KafkaError) -> BatchResult:
        if error.fatal():
            return BatchResult(BatchOutcome.UNKNOWN, error=f"fatal: {error}")
        if self._closing.is_set():
            return BatchResult(BatchOutcome.UNKNOWN, error=f"{error}; closing: not aborted")
        try:
            producer.abort_transaction(self.settings.relay_transaction_timeout_seconds)
        except KafkaException as exc:
            return BatchResult(BatchOutcome.UNKNOWN, error=f"{error}; abort: {exc}")
        return BatchResult(BatchOutcome.ABORTED, error=str(error))


class _RowRejected(Exception):
    def __init__(self, row_id: int, error: KafkaError) -> None:
        super().__init__(str(error))
        self.row_id = row_id
        self.error = error
