"""The outbox relay: publishes ``outbox_message`` rows to Kafka exactly once, in order per key.

Contract:

* The outbox is split into ``outbox_shards`` shards by key hash (``sa01.outbox.store``): all
  rows of a key are in one shard, so publishing each shard in id order keeps the order
  of every key. The count is fixed per deployment (docs/operations.md: how to change it).
* Each shard is a :class:`~outbox.singleton.SingletonJob`: one holder at a time, under
  the shard's own advisory lock on a dedicated connection. Every started relay (the
  ``publish-outbox`` command, and each worker's embedded relay) competes for every
  shard, so a shard whose holder dies (its session closes) is taken over by another
  process; a process holding no shard keeps trying. A process keeps at most its fair
  share, ``ceil(shards / relays started)``, and hands an extra shard over.
* Each shard has its own transactional id, so the newest holder's
  ``init_transactions`` fences any zombie predecessor of that shard, and its own ledger
  position (ledger records are keyed by that id). With one shard the id and lock key
  are those of the unsharded relay.
* Rows are claimed (read, nothing written) in id order, skipping keys whose earliest row
  is in backoff. Each batch has a sequence number; the same Kafka transaction writes it
  to the ledger with the row ids of the batch and of the batch before it. A batch is
  settled (one statement: deleted, or marked published when
  ``SA01_OUTBOX_RETENTION_SECONDS`` > 0) only after its commit; after a crash or an
  uncertain commit the last ledger record names the rows to settle (see
  ``sa01.outbox.ledger``). While batch k commits in Kafka, batch k-1 is settled and
  batch k+1 claimed, skipping both (pipelining); when k does not commit, k+1 is dropped
  (its rows are still pending) before anything else of the shard is published.
* A broker-level failure never counts an attempt (rows wait for the broker); a
  row-specific failure counts one and backs off; after ``max_attempts`` the row is
  dead-lettered by the one writer (:meth:`DeadLetterStore.record`): the table and its
  topic's ``.dlq``.
* Every started relay, holding shards or not, refreshes the backlog gauges
  (``outbox_messages_pending``, ``outbox_relay_lag_seconds``: one count for the whole
  schema, read with ``max``) every ``BACKLOG_REFRESH_SECONDS`` on a timer of its own,
  whatever its publish loops are doing. A failed refresh keeps the last values.
  ``outbox_relay_active`` is the number of shards this process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql

from sa01.core.errors import (
    ConfigurationError,
    InfrastructureUnavailableError,
    PermanentError,
    ServiceUnavailableError,
)
from sa01.core.metrics import Metrics
from sa01.core.settings import MAX_OUTBOX_SHARDS, Settings
from sa01.core.topics import OUTBOX_LEDGER, dlq
from sa01.outbox.database import Database
from sa01.outbox.dead_letter_store import DeadLetter, DeadLetterStore
from sa01.outbox.idempotency import IdempotencyStore
from sa01.outbox.layout import (
    ShardCountMismatchError,
    check_shard_count,
    read_layout,
    record_shard_count,
)
from sa01.outbox.ledger import IdRange, LedgerEntry, encode_entry, id_ranges, read_last_entry
from sa01.outbox.singleton import AdvisoryLock, Lease, SingletonJob
from sa01.outbox.store import ClaimedRow, Conn, OutboxStore
from sa01.outbox.transactions import (
    ROW_SPECIFIC_ERRORS,
    BatchOutcome,
    BatchResult,
    LedgerRecord,
    TransactionalPublisher,
)
from sa01.resilience.retry import Backoff
from schemas.headers import ERRORS_EXCEPTION, dead_letter_headers

__all__ = ["BACKLOG_REFRESH_SECONDS", "OutboxRelay", "PublishError", "Shard", "ShardRelay"]

logger = logging.getLogger(__name__)

BACKLOG_REFRESH_SECONDS = 5.0
"""How often every relay counts the outbox backlog for its gauges."""

REBALANCE_SECONDS = 5.0
"""How often a shard holder checks that its process holds no more than its fair share."""


class PublishError(PermanentError):
    """Kafka refused an outbox row for a reason of its own (size, topic, ...)."""


def _row_backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(0.5 * 2 ** max(attempts - 1, 0), 60.0))


@dataclass(frozen=True)
class Shard:
    """One shard of the outbox: its index, the shard count, transactional id and lock."""

    index: int
    count: int
    relay_id: str
    lock_key: int

    @classmethod
    def all_of(cls, settings: Settings) -> list[Shard]:
        """Every shard of the configured outbox."""
        return [
            cls(
                index,
                settings.outbox_shards,
                settings.relay_shard_transactional_id(index),
                settings.relay_shard_lock_key(index),
            )
            for index in range(settings.outbox_shards)
        ]

    @property
    def name(self) -> str:
        """``outbox-relay``, or ``outbox-relay-<index>/<count>`` when sharded."""
        return "outbox-relay" if self.count == 1 else f"outbox-relay-{self.index}/{self.count}"


@dataclass(frozen=True)
class _Batch:
    seq: int
    rows: list[ClaimedRow]

    @functools.cached_property
    def ids(self) -> list[IdRange]:
        return id_ranges(row.id for row in self.rows)


def _ids_of(*batches: _Batch | None) -> list[IdRange]:
    """The rows of ``batches`` as one list of ranges (two batches back to back: one)."""
    return id_ranges(row.id for batch in batches if batch is not None for row in batch.rows)


@dataclass(frozen=True)
class _Run:
    """What a run of back-to-back batches did: rows published, and whether it ended on a
    broker failure (the caller waits before trying again)."""

    published: int
    broker_failed: bool = False


class ShardRelay:
    """Publishes one shard while its job holds the shard's lock."""

    def __init__(self, relay: OutboxRelay, shard: Shard) -> None:
        self.relay = relay
        self.settings = relay.settings
        self.shard = shard
        self.relay_id = shard.relay_id
        self.ledger_topic = relay.settings.topic(OUTBOX_LEDGER)
        self.wake = asyncio.Event()
        self._seq = 0
        self.job = SingletonJob(
            relay.settings,
            name=shard.name,
            lock_key=shard.lock_key,
            body=self.serve,
            on_change=lambda held: relay.held_changed(),
        )

    @property
    def _claim_shard(self) -> tuple[int, int]:
        return (self.shard.index, self.shard.count)

    # ------------------------------------------------------------------ bodies
    async def serve(self, lease: Lease) -> None:
        """The job's body: publish until stopped, or until this process holds too many."""
        if await self.relay.over_share():
            return
        async with self._publishing() as publisher:
            lease.healthy()
            await self._publish_until_stopped(publisher, lease)

    async def drain(self, lease: Lease) -> int:
        """Publish until no publishable row of this shard is left; rows published."""
        async with self._publishing() as publisher:
            total = 0
            while True:
                run = await self._publish_batches(publisher)
                total += run.published
                if run.broker_failed:
                    raise InfrastructureUnavailableError(
                        "kafka", "the broker refused the batch; rows are kept pending"
                    )
                if run.published == 0:
                    return total

    @contextlib.asynccontextmanager
    async def _publishing(self) -> AsyncIterator[TransactionalPublisher]:
        async with self.relay.database.connection() as conn:
            await check_shard_count(conn, self.shard.count)
        publisher = TransactionalPublisher(self.settings, self.relay_id)
        try:
            await publisher.start()
            await self._reconcile()
            logger.info("%s active (%s, from batch %d)", self.shard.name, self.relay_id, self._seq)
            yield publisher
        finally:
            await publisher.close()

    async def _publish_until_stopped(self, publisher: TransactionalPublisher, lease: Lease) -> None:
        idle_checks = 0
        failures = 0
        loop = asyncio.get_running_loop()
        next_share_check = loop.time() + REBALANCE_SECONDS
        while not lease.stopping.is_set():
            if loop.time() >= next_share_check:
                next_share_check = loop.time() + REBALANCE_SECONDS
                if await self.relay.over_share():
                    logger.info("%s handed over (this process holds too many)", self.shard.name)
                    return
            # Cleared before the claims, not after: a commit whose wake-up arrives while
            # the last (empty) claim runs must not wait for the next poll.
            self.wake.clear()
            run = await self._publish_batches(publisher)
            if run.broker_failed:
                failures += 1
                await self._sleep(lease, self.relay.broker_backoff.delay(failures))
                continue
            failures = 0
            if run.published > 0:
                continue
            idle_checks += 1
            if idle_checks % 10 == 0:
                await self.relay.cleanup_if_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.relay_poll_interval_seconds)

    @staticmethod
    async def _sleep(lease: Lease, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lease.stopping.wait(), seconds)

    async def _reconcile(self) -> None:
        last: LedgerEntry = await read_last_entry(self.settings, self.ledger_topic, self.relay_id)
        self._seq = last.seq
        async with self.relay.database.connection() as conn:
            settled = await self.relay.store.reconcile(
                conn, self.relay_id, last, keep=self.relay.keep_published
            )
        if settled:
            logger.info(
                "%s reconciled: %d rows of committed batches settled", self.shard.name, settled
            )

    # ----------------------------------------------------------------- batches
    async def _claim(self, skip: list[IdRange]) -> _Batch | None:
        """The next batch: the lowest publishable ids, skipping the rows ``skip``.

        Always from the lowest id, never from the highest one skipped: ids are taken in
        one order and committed in another (two group commits), so a row of a lower id
        can appear after a higher one was claimed, and a later row of its key may follow.
        """
        async with self.relay.database.connection() as conn:
            rows = await self.relay.store.claim(
                conn,
                self.settings.relay_batch_size,
                self._claim_shard,
                skip,
                max_bytes=self.settings.relay_batch_max_bytes,
            )
        if not rows:
            return None
        self._seq += 1
        return _Batch(self._seq, rows)

    async def _settle(self, batch: _Batch | None) -> None:
        if batch is None:
            return
        async with self.relay.database.connection() as conn:
            await self.relay.store.settle(
                conn,
                [row.id for row in batch.rows],
                keep=self.relay.keep_published,
                relay_id=self.relay_id,
                seq=batch.seq,
            )
        self.relay.metrics.outbox_published_total.inc(len(batch.rows))
        self.relay.metrics.outbox_batch_size.observe(len(batch.rows))

    async def _publish_batches(self, publisher: TransactionalPublisher) -> _Run:
        """Publish batches back to back until none is ready or one fails.

        While batch k commits in Kafka, batch k-1 is settled (one statement) and batch k+1
        is claimed, skipping the rows of both. k's ledger record names the rows of k and
        k-1, the only batches that can be committed and not settled at a crash. k+1 is
        dropped when k did not commit: a later row of a key must not overtake an earlier
        one.
        """
        total = 0
        committed: _Batch | None = None  # committed in Kafka, not yet settled
        batch = await self._claim([])
        while batch is not None:
            unsettled = _ids_of(batch, committed)
            ledger = LedgerRecord(
                self.ledger_topic, self.relay_id.encode(), encode_entry(batch.seq, unsettled)
            )
            publishing = asyncio.ensure_future(publisher.publish(batch.rows, ledger))
            try:
                following, _ = await asyncio.gather(self._claim(unsettled), self._settle(committed))
            except BaseException:
                # The ledger tells the next holder whether the batch in flight committed.
                publishing.cancel()
                raise
            committed = None
            result = await publishing
            if result.outcome is BatchOutcome.COMMITTED:
                committed = batch
                total += len(batch.rows)
                batch = following
                continue
            if result.outcome is BatchOutcome.UNKNOWN:
                logger.warning(
                    "%s batch %d outcome unknown (%s): re-initialising",
                    self.shard.name,
                    batch.seq,
                    result.error,
                )
                await self._restart_publisher(publisher)  # reconciles both batches
                return _Run(total, broker_failed=True)
            # ``following`` is dropped: nothing was written, its rows are still pending.
            await self._handle_aborted(batch, result)
            if result.row_errors:
                # librdkafka caches "unknown topic" and the like: start from fresh metadata.
                await self._restart_publisher(publisher)
                return _Run(total)
            return _Run(total, broker_failed=True)
        await self._settle(committed)
        return _Run(total)

    async def _restart_publisher(self, publisher: TransactionalPublisher) -> None:
        await publisher.restart()
        await self._reconcile()

    async def _handle_aborted(self, batch: _Batch, result: BatchResult) -> None:
        row_failures = {
            row_id: err
            for row_id, err in result.row_errors.items()
            if err.code() in ROW_SPECIFIC_ERRORS
        }
        by_id = {row.id: row for row in batch.rows}
        store = self.relay.store
        async with self.relay.database.connection() as conn:
            for row_id, err in row_failures.items():
                row = by_id.get(row_id)
                if row is None:
                    continue
                attempts, max_attempts = await store.fail(
                    conn, row_id, str(err), _row_backoff(row.attempts + 1)
                )
                self.relay.metrics.outbox_failed_total.labels(kind="row").inc()
                if attempts >= max_attempts:
                    await self.relay.dead_letter(conn, row, PublishError(str(err)), attempts)
        if not row_failures:
            self.relay.metrics.outbox_failed_total.labels(kind="broker").inc(len(batch.rows))
            logger.warning(
                "%s batch %d aborted by the broker: %s", self.shard.name, batch.seq, result.error
            )


class OutboxRelay:
    """Publishes the outbox of one schema; construct, then :meth:`start` or :meth:`drain`."""

    def __init__(self, settings: Settings, database: Database, metrics: Metrics) -> None:
        self.settings = settings
        self.database = database
        self.metrics = metrics
        self.store = OutboxStore()
        self.dead_letters = DeadLetterStore()
        self.idempotency = IdempotencyStore()
        self.broker_backoff = Backoff(maximum=settings.infrastructure_retry_max_seconds)
        self.shards = [ShardRelay(self, shard) for shard in Shard.all_of(settings)]
        self.backlog_refresh_seconds = BACKLOG_REFRESH_SECONDS
        self._stopping = asyncio.Event()
        self._backlog_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._notify_task: asyncio.Task[None] | None = None
        self._notify_conn: Conn | None = None
        self._last_notify = 0.0
        self._last_cleanup = 0.0
        self._members = 1

    # ------------------------------------------------------------------ state
    @property
    def keep_published(self) -> bool:
        """Published rows are kept (marked ``published``) rather than deleted."""
        return self.settings.outbox_retention_seconds > 0

    @property
    def held(self) -> list[int]:
        """The shards this process publishes now."""
        return [s.shard.index for s in self.shards if s.job.active]

    @property
    def active(self) -> bool:
        """Whether this process publishes at least one shard."""
        return any(s.job.active for s in self.shards)

    def held_changed(self) -> None:
        """A shard was taken or let go: update ``outbox_relay_active``."""
        self.metrics.outbox_relay_active.set(len(self.held))

    @property
    def member_lock_key(self) -> int:
        """Shared advisory lock every started relay of the schema holds (to count them)."""
        return self.settings.relay_lock_key ^ 0x5A01

    async def over_share(self) -> bool:
        """Whether this process holds more shards than ``ceil(shards / relays started)``."""
        count = len(self.shards)
        if count == 1:
            return False
        try:
            async with self.database.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND mode = 'ShareLock' AND database = ("
                    "   SELECT oid FROM pg_database WHERE datname = current_database())"
                    " AND ((classid::bigint << 32) | objid::bigint) = %s",
                    (self.member_lock_key,),
                )
                row = await cur.fetchone()
        except (InfrastructureUnavailableError, psycopg.Error):
            return False
        members = row[0] if row else 1
        self._members = max(members if isinstance(members, int) else 1, 1)
        return len(self.held) > math.ceil(count / self._members)

    # ---------------------------------------------------------------- control
    @property
    def channel(self) -> str:
        """The NOTIFY channel that wakes the relays of this schema."""
        return f"sa01_outbox_{self.settings.database_schema}"

    def wake(self) -> None:
        """New rows were committed: publish them now instead of at the next poll.

        The shards this process holds are woken in-process. When it does not hold every
        shard, the holders elsewhere (other workers, ``publish-outbox``) are told with
        one ``NOTIFY`` per ``relay_notify_interval_seconds`` at most, sent after the
        writers' commits and outside their transactions, so the global lock a NOTIFY
        takes at commit never serialises them (bench/notify_wakeup.py). Polling remains
        the fallback if a notification is lost.
        """
        for shard in self.shards:
            shard.wake.set()
        if len(self.held) == len(self.shards) or self._stopping.is_set():
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
            logger.debug("relay wake-up not sent (the holders will poll): %s", exc)
            if self._notify_conn is not None:
                await self._notify_conn.close()
            self._notify_conn = None

    async def _listen(self) -> None:
        """Hold the member lock and turn notifications on the channel into wake-ups."""
        conn = await psycopg.AsyncConnection.connect(
            self.settings.database_url, autocommit=True, connect_timeout=5
        )
        async with conn:
            await conn.execute("SELECT pg_advisory_lock_shared(%s)", (self.member_lock_key,))
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            async for _ in conn.notifies():
                for shard in self.shards:
                    shard.wake.set()

    async def _listen_forever(self) -> None:
        """:meth:`_listen`, restarted after a lost connection (polling covers the gap)."""
        while True:
            try:
                await self._listen()
            except psycopg.Error as exc:
                logger.debug("relay LISTEN lost, polling meanwhile: %s", exc)
            await asyncio.sleep(self.settings.relay_poll_interval_seconds)

    async def start(self) -> None:
        """Compete for every shard in the background and publish those taken, until stopped.

        The backlog gauges are refreshed beside the shards' loops: a batch stuck on an
        unreachable broker, or a relay holding no shard, must not freeze them.
        """
        self._stopping.clear()
        self._listen_task = asyncio.create_task(self._listen_forever(), name="outbox-listen")
        self._backlog_task = asyncio.create_task(
            self._refresh_backlog_forever(), name="outbox-backlog"
        )
        for shard in self.shards:
            await shard.job.start()

    async def stop(self) -> None:
        """Stop publishing and release every lock."""
        self._stopping.set()
        for shard in self.shards:
            await shard.job.stop()
        for task in (self._backlog_task, self._notify_task, self._listen_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._backlog_task = self._notify_task = self._listen_task = None
        if self._notify_conn is not None:
            await self._notify_conn.close()
            self._notify_conn = None
        self.held_changed()

    async def drain(self, lock_timeout: float = 30.0) -> int:
        """Take every shard's lock, publish until no publishable row is left; rows published.

        The shards are drained concurrently. Raises :class:`ServiceUnavailableError` when
        another relay keeps a shard's lock ``lock_timeout`` seconds.
        """
        results = await asyncio.gather(
            *(self._drain_shard(shard, lock_timeout) for shard in self.shards)
        )
        return sum(results)

    async def _drain_shard(self, shard: ShardRelay, lock_timeout: float) -> int:
        published = await shard.job.run_once(shard.drain, wait_seconds=lock_timeout)
        if published is None:
            raise ServiceUnavailableError(
                "outbox-relay", f"another relay holds the lock after {lock_timeout:.0f}s"
            )
        return published

    async def change_shard_count(self, shards: int, lock_timeout: float = 30.0) -> int:
        """Drain with this relay's count, then record ``shards`` (``sa01.outbox.layout``).

        Returns the rows published by the drain. Raises :class:`ServiceUnavailableError`
        when a running relay holds a shard of this count, and :class:`ConfigurationError`
        when this relay's count is not the recorded one or rows are still in flight.
        """
        if not 1 <= shards <= MAX_OUTBOX_SHARDS:
            # A count no relay can be configured with would stop publishing for good.
            raise ConfigurationError(
                f"an outbox has 1 to {MAX_OUTBOX_SHARDS} shards, not {shards}; nothing was changed"
            )
        published = await self.drain(lock_timeout)
        locks = [AdvisoryLock(self.settings, s.shard.lock_key, s.shard.name) for s in self.shards]
        try:
            for lock in locks:
                if not await lock.try_acquire():
                    raise ServiceUnavailableError(
                        "outbox-relay",
                        f"{lock.name} was taken by a running relay: stop every relay "
                        "(publish-outbox, and the workers' with "
                        "SA01_RELAY_ENABLED_IN_WORKER=false) first",
                    )
            async with self.database.connection() as conn:
                layout = await read_layout(conn, self.settings)
                if layout.recorded not in (None, self.settings.outbox_shards):
                    raise ShardCountMismatchError(
                        f"the outbox is published with {layout.recorded} shards, "
                        f"not {self.settings.outbox_shards}"
                    )
                if layout.in_flight:
                    raise ConfigurationError(
                        f"{layout.in_flight} outbox rows are still being published by a "
                        "relay of another shard count; nothing was changed"
                    )
                await record_shard_count(conn, shards)
        finally:
            for lock in locks:
                await lock.release()
        logger.info("outbox shard count changed", extra={"shards": shards})
        return published

    # ---------------------------------------------------------------- cleanup
    async def cleanup_if_due(self) -> None:
        """:meth:`cleanup` once per ``relay_cleanup_interval_seconds`` (any shard's holder)."""
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

    # ---------------------------------------------------------------- backlog
    async def _refresh_backlog_metrics(self) -> None:
        async with self.database.connection() as conn:
            pending, lag = await self.store.pending_count(conn)
        self.metrics.outbox_messages_pending.set(pending)
        self.metrics.outbox_relay_lag_seconds.set(lag)

    async def _refresh_backlog_forever(self) -> None:
        """Refresh the backlog gauges now, then every ``backlog_refresh_seconds``.

        Only reads, whether this relay holds shards or not; never stops the relay: while
        PostgreSQL does not answer the gauges keep their last values.
        """
        while True:
            try:
                await self._refresh_backlog_metrics()
            except Exception as exc:
                logger.debug("outbox backlog gauges not refreshed: %s", exc)
            await asyncio.sleep(self.backlog_refresh_seconds)

    # ----------------------------------------------------------- dead letters
    async def dead_letter(
        self, conn: Conn, row: ClaimedRow, error: Exception, attempts: int
    ) -> None:
        """Give up on ``row``: mark it failed and dead-letter it with the one writer."""
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
            await self.dead_letters.record(
                conn,
                DeadLetter(
                    idempotency_key=f"relay:{row.idempotency_key}",
                    source="relay",
                    topic=row.topic,
                    payload=row.value,
                    key=row.key,
                    headers=headers,
                    error_class=headers[ERRORS_EXCEPTION],
                    error_message=str(error),
                    attempts=attempts,
                ),
                outbox_key=f"dlq:{row.idempotency_key}",
                max_attempts=self.settings.outbox_max_attempts,
            )
        self.metrics.dlq_messages_total.labels(topic=dlq(row.topic)).inc()
        logger.error("outbox row %d dead-lettered after %d attempts: %s", row.id, attempts, error)
