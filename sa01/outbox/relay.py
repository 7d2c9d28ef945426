"""The outbox relay: publishes ``outbox_message`` rows to Kafka exactly once, in order.

Contract:

* One relay is active per schema: it holds a session-level advisory lock on a
  dedicated connection; the others wait as hot standbys and take over when the lock
  is released (a crashed holder's connection closes and frees it).
* All active relays of a schema share one transactional id, so the newest holder's
  ``init_transactions`` fences any zombie predecessor.
* Rows are claimed in id order (per-key order), skipping keys whose earliest row is
  in backoff, under a sequence number that the same Kafka transaction writes to the
  ledger. Rows are marked published only after the commit; after a crash or an
  uncertain commit the ledger says which batch was committed (see ``sa01.outbox.ledger``).
* A broker-level failure never counts an attempt (rows wait for the broker); a
  row-specific failure counts one and backs off; after ``max_attempts`` the row goes
  to ``dead_letter_message`` and its topic's ``.dlq``.
* Every started relay, active or standing by, refreshes the backlog gauges
  (``outbox_messages_pending``, ``outbox_relay_lag_seconds``: one count for the whole
  schema, read with ``max``) every ``BACKLOG_REFRESH_SECONDS`` on a timer of its own,
  whatever its publish loop is doing: idle, publishing under load, stuck on a batch,
  backing off from the broker, or unable to become active while Kafka is down. A
  failed refresh keeps the last values and is retried at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from sa01.core.errors import InfrastructureUnavailableError, PermanentError, ServiceUnavailableError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import OUTBOX_LEDGER, dlq
from sa01.outbox.database import Database, database_unavailable
from sa01.outbox.dead_letter_store import DeadLetter, DeadLetterStore
from sa01.outbox.idempotency import IdempotencyStore
from sa01.outbox.ledger import encode_entry, read_last_sequence
from sa01.outbox.store import ClaimedRow, OutboxRecord, OutboxStore
from sa01.outbox.transactions import (
    ROW_SPECIFIC_ERRORS,
    BatchOutcome,
    BatchResult,
    LedgerRecord,
    TransactionalPublisher,
)
from schemas.headers import dead_letter_headers

__all__ = ["BACKLOG_REFRESH_SECONDS", "OutboxRelay", "PublishError"]

logger = logging.getLogger(__name__)

BACKLOG_REFRESH_SECONDS = 5.0
"""How often the active relay counts the outbox backlog for its gauges."""


class PublishError(PermanentError):
    """Kafka refused an outbox row for a reason of its own (size, topic, ...)."""


def _row_backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(0.5 * 2 ** max(attempts - 1, 0), 60.0))


class OutboxRelay:
    """Publishes the outbox of one schema; construct, then :meth:`start` or :meth:`drain`."""

    def __init__(self, settings: Settings, database: Database, metrics: Metrics) -> None:
        self.settings = settings
        self.database = database
        self.metrics = metrics
        self.relay_id = settings.relay_transactional_id
        self.ledger_topic = settings.topic(OUTBOX_LEDGER)
        self.store = OutboxStore()
        self.dead_letters = DeadLetterStore()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self._seq = 0
        self._last_cleanup = 0.0
        self.idempotency = IdempotencyStore()
        self.active = False
        self.backlog_refresh_seconds = BACKLOG_REFRESH_SECONDS
        self._notify_task: asyncio.Task[None] | None = None
        self._notify_conn: psycopg.AsyncConnection[Any] | None = None
        self._last_notify = 0.0

    # ------------------------------------------------------------------ control
    @property
    def channel(self) -> str:
        """The NOTIFY channel that wakes the active relay of this schema."""
        return f"sa01_outbox_{self.settings.database_schema}"

    def wake(self) -> None:
        """New rows were committed: publish them now instead of at the next poll.

        When this process's relay is the active one the wake-up is an in-process event.
        Otherwise the active relay is elsewhere (another worker, ``publish-outbox``): it
        is told with one ``NOTIFY`` per ``relay_notify_interval_seconds`` at most, sent
        after the writers' commits and outside their transactions, so the global lock a
        NOTIFY takes at commit never serialises them (bench/notify_wakeup.py measures
        the cost a NOTIFY in every writer's transaction would have). Polling remains the
        fallback if a notification is lost.
        """
        self._wake.set()
        if self.active or self._stopping.is_set():
            return
        if self._notify_task is None or self._notify_task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._notify_task = loop.create_task(self._notify_active(), name="outbox-notify")

    async def _notify_active(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last_notify + self.settings.relay_notify_interval_seconds - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_notify = loop.time()
        try:
            if self._notify_conn is None or self._notify_conn.closed:
                self._notify_conn = await psycopg.AsyncConnection.connect(
                    self.settings.database_url, autocommit=True, connect_timeout=5
                )
            await self._notify_conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
        except psycopg.Error as exc:
            logger.debug("relay wake-up not sent (the active relay will poll): %s", exc)
            if self._notify_conn is not None:
                await self._notify_conn.close()
            self._notify_conn = None

    async def _listen(self) -> None:
        """While active: turn notifications on the channel into wake-ups."""
        conn = await psycopg.AsyncConnection.connect(
            self.settings.database_url, autocommit=True, connect_timeout=5
        )
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            async for _ in conn.notifies():
                self._wake.set()

    async def start(self) -> None:
        """Run in the background: wait for the lock, then publish until stopped.

        The backlog gauges are refreshed beside that loop, not in one of its branches:
        a batch stuck on an unreachable broker, or a relay that cannot become active,
        must not freeze them.
        """
        self._stopping.clear()
        self._task = asyncio.create_task(self._run_forever(), name="outbox-relay")
        self._backlog_task = asyncio.create_task(
            self._refresh_backlog_forever(), name="outbox-backlog"
        )

    async def stop(self) -> None:
        """Stop publishing and release the lock."""
        self._stopping.set()
        self._wake.set()
        for task in (self._task, self._backlog_task, self._notify_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._backlog_task = self._notify_task = None
        if self._notify_conn is not None:
            await self._notify_conn.close()
            self._notify_conn = None

    async def drain(self, lock_timeout: float = 30.0) -> int:
        """Take the lock, publish until no publishable row is left, return rows published."""
        lock_conn = await self._acquire_lock(wait_seconds=lock_timeout)
        if lock_conn is None:
            raise ServiceUnavailableError(
                "outbox-relay", f"another relay holds the lock after {lock_timeout:.0f}s"
            )
        try:
            async with self._serving(lock_conn) as publisher:
                total = 0
                while True:
                    published = await self._publish_one_batch(publisher)
                    if published < 0:
                        raise InfrastructureUnavailableError(
                            "kafka", "the broker refused the batch; rows are kept pending"
                        )
                    if published == 0:
                        return total
                    total += published
        finally:
            await lock_conn.close()

    # --------------------------------------------------------------------- loop
    async def _run_forever(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                lock_conn = await self._acquire_lock(wait_seconds=None)
                if lock_conn is None:
                    continue
                try:
                    async with self._serving(lock_conn) as publisher:
                        backoff = 0.2
                        await self._publish_until_stopped(publisher, lock_conn)
                finally:
                    await lock_conn.close()
            except asyncio.CancelledError:
                raise
            except (ServiceUnavailableError, psycopg.Error) as exc:
                logger.warning("outbox relay paused: %s (retrying in %.1fs)", exc, backoff)
            except Exception:
                logger.exception("outbox relay failed; restarting in %.1fs", backoff)
            await self._sleep(backoff)
            backoff = min(backoff * 2, self.settings.infrastructure_retry_max_seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _acquire_lock(
        self, wait_seconds: float | None
    ) -> psycopg.AsyncConnection[Any] | None:
        """A connection holding the relay lock, or None when ``wait_seconds`` ran out."""
        loop = asyncio.get_running_loop()
        deadline = None if wait_seconds is None else loop.time() + wait_seconds
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.settings.database_url,
                autocommit=True,
                connect_timeout=5,
                options=f"-c search_path={self.settings.database_schema}",
            )
        except psycopg.OperationalError as exc:
            raise database_unavailable(self.settings, exc) from exc
        try:
            while not self._stopping.is_set():
                cur = await conn.execute(
                    "SELECT pg_try_advisory_lock(%s)", (self.settings.relay_lock_key,)
                )
                row = await cur.fetchone()
                if row is not None and row[0]:
                    return conn
                if deadline is not None and loop.time() >= deadline:
                    break
                await self._sleep(self.settings.relay_lock_retry_seconds)
        except BaseException:
            await conn.close()
            raise
        await conn.close()
        return None

    @contextlib.asynccontextmanager
    async def _serving(self, lock_conn: psycopg.AsyncConnection[Any]) -> Any:
        publisher = TransactionalPublisher(self.settings, self.relay_id)
        listener: asyncio.Task[None] | None = None
        try:
            await publisher.start()
            await self._reconcile()
            listener = asyncio.create_task(self._listen_quietly(), name="outbox-listen")
            self.active = True
            self.metrics.outbox_relay_active.set(1)
            logger.info("outbox relay active (%s, from batch %d)", self.relay_id, self._seq)
            yield publisher
        finally:
            self.active = False
            self.metrics.outbox_relay_active.set(0)
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            await publisher.close()

    async def _listen_quietly(self) -> None:
        """:meth:`_listen`, restarted after a lost connection (polling covers the gap)."""
        while True:
            try:
                await self._listen()
            except psycopg.Error as exc:
                logger.debug("relay LISTEN lost, polling meanwhile: %s", exc)
            await asyncio.sleep(self.settings.relay_poll_interval_seconds)

    async def _reconcile(self) -> None:
        self._seq = await read_last_sequence(self.settings, self.ledger_topic, self.relay_id)
        async with self.database.connection() as conn:
            published, released = await self.store.reconcile(conn, self.relay_id, self._seq)
        if published or released:
            logger.info(
                "outbox relay reconciled: %d rows were committed, %d return to pending",
                published,
                released,
            )

    async def _publish_until_stopped(
        self, publisher: TransactionalPublisher, lock_conn: psycopg.AsyncConnection[Any]
    ) -> None:
        idle_checks = 0
        failures = 0
        while not self._stopping.is_set():
            published = await self._publish_one_batch(publisher)
            if published > 0:
                failures = 0
                continue
            if published < 0:
                failures += 1
                await self._sleep(
                    min(0.2 * 2**failures, self.settings.infrastructure_retry_max_seconds)
                )
                continue
            idle_checks += 1
            if idle_checks % 10 == 0:
                await lock_conn.execute("SELECT 1")  # the lock lives as long as this session
                await self._cleanup_if_due()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.relay_poll_interval_seconds)

    async def _cleanup_if_due(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_cleanup < self.settings.relay_cleanup_interval_seconds:
            return
        self._last_cleanup = now
        await self.cleanup()

    async def cleanup(self, batch: int = 10_000) -> tuple[int, int]:
        """Delete published rows past retention and expired idempotency records."""
        retention = timedelta(seconds=self.settings.outbox_retention_seconds)
        async with self.database.connection() as conn:
            rows = await self.store.delete_published(conn, retention, batch)
            records = await self.idempotency.purge_expired(conn, batch)
        if rows or records:
            logger.info("cleanup: %d published rows, %d expired idempotency records", rows, records)
        return rows, records

    async def _refresh_backlog_metrics(self) -> None:
        async with self.database.connection() as conn:
            pending, lag = await self.store.pending_count(conn)
        self.metrics.outbox_messages_pending.set(pending)
        self.metrics.outbox_relay_lag_seconds.set(lag)

    async def _refresh_backlog_forever(self) -> None:
        """Refresh the backlog gauges now, then every ``backlog_refresh_seconds``.

        Only reads, whether this relay is active or not; never stops the relay: while
        PostgreSQL does not answer the gauges keep their last values (the publish loop
        reports the outage itself).
        """
        while True:
            try:
                await self._refresh_backlog_metrics()
            except Exception as exc:
                logger.debug("outbox backlog gauges not refreshed: %s", exc)
            await asyncio.sleep(self.backlog_refresh_seconds)

    # -------------------------------------------------------------------- batch
    async def _publish_one_batch(self, publisher: TransactionalPublisher) -> int:
        """Publish one batch: rows published, 0 when none was ready, -1 on a broker failure."""
        seq = self._seq + 1
        async with self.database.connection() as conn:
            rows = await self.store.claim(conn, self.relay_id, seq, self.settings.relay_batch_size)
        if not rows:
            return 0
        self._seq = seq
        ledger = LedgerRecord(self.ledger_topic, self.relay_id.encode(), encode_entry(seq))
        result = await publisher.publish(rows, ledger)
        if result.outcome is BatchOutcome.COMMITTED:
            async with self.database.connection() as conn:
                await self.store.mark_published(conn, self.relay_id, seq)
            self.metrics.outbox_published_total.inc(len(rows))
            self.metrics.outbox_batch_size.observe(len(rows))
            return len(rows)
        if result.outcome is BatchOutcome.UNKNOWN:
            logger.warning(
                "outbox batch %d outcome unknown (%s): re-initialising", seq, result.error
            )
            await self._restart_publisher(publisher)
            return -1
        await self._handle_aborted(rows, seq, result)
        if result.row_errors:
            # librdkafka caches "unknown topic" and the like: start from fresh metadata.
            await self._restart_publisher(publisher)
            return 0
        return -1

    async def _restart_publisher(self, publisher: TransactionalPublisher) -> None:
        await publisher.restart()
        await self._reconcile()

    async def _handle_aborted(self, rows: list[ClaimedRow], seq: int, result: BatchResult) -> None:
        row_failures = {
            row_id: err
            for row_id, err in result.row_errors.items()
            if err.code() in ROW_SPECIFIC_ERRORS
        }
        by_id = {row.id: row for row in rows}
        async with self.database.connection() as conn:
            for row_id, err in row_failures.items():
                row = by_id.get(row_id)
                if row is None:
                    continue
                attempts, max_attempts = await self.store.fail(
                    conn, row_id, str(err), _row_backoff(row.attempts + 1)
                )
                self.metrics.outbox_failed_total.labels(kind="row").inc()
                if attempts >= max_attempts:
                    await self._dead_letter(conn, row, PublishError(str(err)), attempts)
            await self.store.release(conn, self.relay_id, seq, result.error)
        if not row_failures:
            self.metrics.outbox_failed_total.labels(kind="broker").inc(len(rows))
            logger.warning("outbox batch %d aborted by the broker: %s", seq, result.error)

    async def _dead_letter(
        self, conn: psycopg.AsyncConnection[Any], row: ClaimedRow, error: Exception, attempts: int
    ) -> None:
        headers = dead_letter_headers(
            error,
            topic=row.topic,
            partition=-1,
            offset=-1,
            attempts=attempts,
            idempotency_key=row.idempotency_key,
            content_type=row.headers.get("content-type", "application/octet-stream"),
        )
        async with conn.transaction():
            await self.store.mark_failed(conn, row.id, str(error))
            await self.dead_letters.add(
                conn,
                DeadLetter(
                    idempotency_key=f"relay:{row.idempotency_key}",
                    source="relay",
                    topic=row.topic,
                    payload=row.value,
                    key=row.key,
                    headers=headers,
                    error_class=headers["__streams.errors.exception"],
                    error_message=str(error),
                    attempts=attempts,
                ),
            )
            if not row.topic.endswith(".dlq"):
                await self.store.add(
                    conn,
                    OutboxRecord(
                        topic=dlq(row.topic),
                        value=row.value,
                        key=row.key,
                        headers=headers,
                        idempotency_key=f"dlq:{row.idempotency_key}",
                    ),
                    self.settings.outbox_max_attempts,
                )
        self.metrics.dlq_messages_total.labels(topic=dlq(row.topic)).inc()
        logger.error("outbox row %d dead-lettered after %d attempts: %s", row.id, attempts, error)
