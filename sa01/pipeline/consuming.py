"""Total consumers: every record taken from a topic ends processed or dead-lettered.

One implementation for every agent (conversation, memory, uploads, backups,
degradation):

* :class:`RecordGuard` runs a record's handler to one outcome and never raises:
  :class:`InfrastructureUnavailableError` (PostgreSQL or Kafka down) makes the record
  wait, uncounted and unacked; a :class:`PermanentError` or an error of the input's
  own (:data:`INPUT_ERRORS`: deep JSON's ``RecursionError``, bad base64, a NUL byte
  PostgreSQL refuses) dead-letters it at once; any other exception is retried with
  backoff and dead-lettered after ``processing_max_attempts``. A dead letter is the
  outbox row to ``<topic>.dlq`` and the ``dead_letters`` row with the KIP-1034
  headers, written once per record position (:class:`DeadLetterWriter`).
* :class:`LanedConsumer` gives an agent lanes: records of one lane key (a session, a
  tenant and agent, an upload) run one after the other, different keys at once, up
  to a bound; offsets are acked in order per partition (:class:`OrderedAcks`), so a
  committed offset never passes a record that is not finished, and a record that
  waits holds back only its own partition's commits, never another lane's work.
  Background consumers also take a slot of the :class:`BackgroundShare` around each
  record (see pipeline.priority).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import psycopg

from sa01.core.errors import InfrastructureUnavailableError, PermanentError, SchemaMissingError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.pipeline.dead_lettering import DeadLetterWriter, InboundMessage
from sa01.pipeline.ordering import OrderedAcks, SessionLanes
from sa01.pipeline.priority import BackgroundShare

__all__ = ["DEAD_LETTERED", "INPUT_ERRORS", "LanedConsumer", "RecordGuard", "lane_by_key"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEAD_LETTERED = "dead_lettered"

#: Errors that come from the record itself: retrying the same bytes fails the same way.
#: ``ValueError`` covers ``UnicodeError``, ``binascii.Error`` and JSON errors.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    PermanentError,
    RecursionError,
    ValueError,
    psycopg.DataError,
)

Handler = Callable[[InboundMessage], Awaitable[str]]


class RecordGuard:
    """Runs handlers of one consumer to an outcome; counts ``consumer_records_total``."""

    def __init__(
        self,
        consumer: str,
        settings: Settings,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
        on_dead_letter: Callable[[], None] = lambda: None,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.consumer = consumer
        if ready is None:
            ready = asyncio.Event()
            ready.set()
        self.ready = ready
        self.settings = settings
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.on_dead_letter = on_dead_letter

    async def run(self, message: InboundMessage, handle: Handler) -> str:
        """``handle(message)``'s outcome, or ``dead_lettered``; never raises (but cancels)."""
        attempts = 0
        outages = 0
        while True:
            attempts += 1
            try:
                outcome = await handle(message)
                break
            except (asyncio.CancelledError, SchemaMissingError):
                raise  # lost tables: the worker stops (Runtime.fatal), nothing is acked
            except InfrastructureUnavailableError as exc:
                attempts -= 1
                outages += 1
                await self.pause(exc, outages)
            except Exception as exc:
                self.metrics.consumer_record_failures_total.labels(consumer=self.consumer).inc()
                if (
                    isinstance(exc, INPUT_ERRORS)
                    or attempts >= self.settings.processing_max_attempts
                ):
                    if not isinstance(exc, INPUT_ERRORS):
                        logger.exception(
                            "giving up on a record",
                            extra={"consumer": self.consumer, "position": message.position},
                        )
                    outcome = await self.dead_letter(message, exc, attempts)
                    break
                delay = self.settings.processing_retry_backoff_seconds * 2 ** (attempts - 1)
                logger.warning(
                    "record failed, retrying",
                    extra={
                        "consumer": self.consumer,
                        "position": message.position,
                        "attempt": attempts,
                        "delay_seconds": round(delay, 1),
                        "error": repr(exc),
                    },
                )
                await asyncio.sleep(delay)
        self.count(outcome)
        return outcome

    def count(self, outcome: str) -> None:
        """Count one finished record of this consumer."""
        self.metrics.consumer_records_total.labels(consumer=self.consumer, outcome=outcome).inc()

    async def dead_letter(
        self, message: InboundMessage, error: BaseException, attempts: int
    ) -> str:
        """Dead-letter ``message``; ``dead_lettered``. Never raises (but cancels).

        Waits for the worker to be ready and while PostgreSQL is down. When the error
        itself cannot be stored (its text holds what PostgreSQL refuses), a stand-in
        naming its class is stored instead; anything else is retried with backoff.
        """
        await self.ready.wait()
        failures = 0
        stored_error = error
        while True:
            try:
                await self.dead_letters.write(message, stored_error, attempts)
                break
            except (asyncio.CancelledError, SchemaMissingError):
                raise
            except InfrastructureUnavailableError as exc:
                failures += 1
                await self.pause(exc, failures)
            except Exception as exc:
                failures += 1
                logger.exception(
                    "dead letter refused",
                    extra={"consumer": self.consumer, "position": message.position},
                )
                stored_error = PermanentError(f"{type(error).__name__} (not storable: {exc!r})")
                await asyncio.sleep(
                    min(0.1 * 2**failures, self.settings.infrastructure_retry_max_seconds)
                )
        self.on_dead_letter()
        return DEAD_LETTERED

    async def wait_for(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``operation(*args)``, run again until PostgreSQL and Kafka let it finish."""
        outages = 0
        while True:
            try:
                return await operation(*args)
            except InfrastructureUnavailableError as exc:
                outages += 1
                await self.pause(exc, outages)

    async def pause(self, exc: InfrastructureUnavailableError, outages: int = 1) -> None:
        """Capped exponential wait after ``outages`` failures; counted and logged sparsely."""
        self.metrics.infrastructure_retries_total.labels(service=exc.service).inc()
        delay = min(0.1 * 2**outages, self.settings.infrastructure_retry_max_seconds)
        if outages in (1, 5) or outages % 20 == 0:
            logger.warning(
                "waiting for a service",
                extra={
                    "consumer": self.consumer,
                    "service": exc.service,
                    "retry": outages,
                    "delay_seconds": round(delay, 1),
                    "error": str(exc),
                },
            )
        await asyncio.sleep(delay)


def lane_by_key(message: InboundMessage) -> Hashable:
    """The record's key (tenant and session, tenant and agent, upload id), else its position."""
    return message.key if message.key is not None else message.position


class LanedConsumer:
    """An agent's records on lanes, acked in order per partition; :meth:`submit` never raises."""

    def __init__(
        self,
        guard: RecordGuard,
        handle: Handler,
        max_in_flight: int,
        ready: asyncio.Event,
        *,
        share: BackgroundShare | None = None,
        foreground: bool = False,
        lane_of: Callable[[InboundMessage], Hashable] = lane_by_key,
        lanes: SessionLanes | None = None,
        group_of: Callable[[InboundMessage], Hashable | None] = lambda _: None,
        on_held: Callable[[SessionLanes], None] | None = None,
    ) -> None:
        self.guard = guard
        self.on_held = on_held
        """Shown the lanes (records admitted, parked) after each submit and finished record."""
        self.handle = handle
        self.lanes = lanes if lanes is not None else SessionLanes(max_in_flight)
        self.group_of = group_of
        self.acks = OrderedAcks()
        self.ready = ready
        self.share = share
        self.foreground = foreground
        self.lane_of = lane_of

    @property
    def name(self) -> str:
        """The consumer's name (the agent's)."""
        return self.guard.consumer

    @property
    def in_flight(self) -> int:
        """Records submitted and not finished."""
        return self.lanes.in_flight

    async def submit(self, message: InboundMessage, partition: Hashable, ack: Any) -> None:
        """Track ``message`` for in-order acking and queue it on its lane (waits at the bound)."""
        await self.ready.wait()
        self.acks.track(partition, message.offset, ack)
        await self.lanes.submit(
            self.lane_of(message),
            lambda: self._job(message, partition),
            group=self.group_of(message),
            size=len(message.value) if message.value is not None else 0,
        )
        self._report_held()

    async def _job(self, message: InboundMessage, partition: Hashable) -> None:
        share = self.share
        try:
            if share is None:
                await self.guard.run(message, self.handle)
            elif self.foreground:
                with share.foreground():
                    await self.guard.run(message, self.handle)
            else:
                async with share.slot():
                    await self.guard.run(message, self.handle)
        except SchemaMissingError:
            return  # reported once by Runtime.fatal; never acked: the worker is stopping
        self.acks.done(partition, message.offset)
        if self.on_held is not None:
            # After the lane has counted this record finished.
            asyncio.get_running_loop().call_soon(self._report_held)

    def _report_held(self) -> None:
        if self.on_held is not None:
            self.on_held(self.lanes)

    async def wait_idle(self) -> None:
        """Wait until every submitted record is finished."""
        await self.lanes.wait_idle()

    async def cancel(self) -> None:
        """Drop queued records unacked (at shutdown: they are read again)."""
        await self.lanes.cancel()
