"""The memory journey: store each MemoryRecord in SomaBrain, or keep it in PostgreSQL.

Order per tenant and agent is kept: while older memories of the pair wait in
``pending_memory``, newer ones queue behind them. With PostgreSQL down as well the
message is not acked: it waits, nothing is lost.

Whether a pair has memories waiting is read from PostgreSQL only while it is not known
to have none. :class:`MemoryProcessor` remembers the pairs it found with no pending row
(:class:`ClearGroups`): only the owner of the pair's partition adds its pending rows
(this process, which forgets the pair before adding one), and :class:`MemorySync`, in
whichever process, only takes rows away, so "none waiting" stays true until this
process adds one. It is forgotten entirely whenever partitions are assigned or revoked
(another worker may have added rows while it owned the partition). One pair's records
run one at a time (the memory agent's lanes are its keys, ``tenant:agent``), so no
record of a pair is checked while another of the same pair is being kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

import psycopg
from pydantic import ValidationError

from sa01.core.errors import InfrastructureUnavailableError, PermanentError, TransientError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import MEMORY_REMEMBER
from sa01.outbox.database import Database
from sa01.outbox.pending_memory import PendingMemoryStore
from sa01.outbox.singleton import Lease, SingletonJob
from sa01.pipeline.dead_lettering import DeadLetterWriter, InboundMessage
from sa01.pipeline.priority import BackgroundShare
from sa01.providers.somabrain import SomaBrainClient
from sa01.resilience.retry import sleep_unless
from schemas.codec import decode_message
from schemas.messages import MemoryRecord

__all__ = ["ClearGroups", "MemoryProcessor", "MemorySync", "store_memory"]

logger = logging.getLogger(__name__)


async def store_memory(client: SomaBrainClient, record: MemoryRecord) -> None:
    """Store ``record`` in SomaBrain, or raise: the one place a store outcome is decided.

    Returning means the memory counts as stored; a :class:`TransientError` means keep
    it and replay it later; a :class:`PermanentError` means SomaBrain refuses it.
    """
    await client.remember(record)


class ClearGroups:
    """(tenant, agent) pairs known to have no row waiting in ``pending_memory``.

    Bounded: past ``limit`` pairs it starts over (they are read from PostgreSQL again).
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.generation = 0
        """Incremented by :meth:`clear`: a reading taken before a clear is not kept."""
        self._pairs: set[tuple[str, str]] = set()

    def __contains__(self, pair: object) -> bool:
        return pair in self._pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def add(self, pair: tuple[str, str], generation: int) -> None:
        """``pair`` had no pending row when read in ``generation`` (kept only if current)."""
        if generation != self.generation:
            return
        if len(self._pairs) >= self.limit:
            self._pairs.clear()
        self._pairs.add(pair)

    def discard(self, pair: tuple[str, str]) -> None:
        """A pending row of ``pair`` is about to be added."""
        self._pairs.discard(pair)

    def clear(self) -> None:
        """Forget every pair (partitions were assigned or revoked)."""
        self.generation += 1
        self._pairs.clear()


class MemoryProcessor:
    """Handles one record of ``somabrain.memory.remember`` (run under a RecordGuard).

    Returns ``stored`` or ``pending``; raises :class:`PermanentError` for a record that
    cannot be decoded or that SomaBrain refuses (dead-lettered by the guard) and
    :class:`InfrastructureUnavailableError` while PostgreSQL is down (the record waits).
    """

    def __init__(
        self,
        settings: Settings,
        database: Database,
        client: SomaBrainClient,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.database = database
        self.client = client
        self.metrics = metrics
        self.pending = PendingMemoryStore()
        self.clear_groups = ClearGroups()

    async def process(self, message: InboundMessage) -> str:
        """``stored`` or ``pending`` (see the class)."""
        record = decode_message(MemoryRecord, message.value)
        pair = (record.tenant_id, record.agent_id)
        backlog = False
        if pair not in self.clear_groups:
            generation = self.clear_groups.generation
            async with self.database.connection() as conn:
                backlog = await self.pending.has_unsynced(conn, *pair)
            if not backlog:
                self.clear_groups.add(pair, generation)
        if not backlog:
            try:
                await store_memory(self.client, record)
                return "stored"
            except TransientError as exc:
                if isinstance(exc, InfrastructureUnavailableError):
                    raise
                logger.info("SomaBrain unavailable, memory %s kept: %s", record.memory_id, exc)
        self.clear_groups.discard(pair)
        async with self.database.connection() as conn:
            await self.pending.add(conn, record)
        return "pending"


class MemorySync:
    """Replays ``pending_memory`` into SomaBrain in order per tenant and agent, each once.

    One process at a time holds the sync lock (a PostgreSQL advisory lock held by a
    :class:`~sa01.outbox.singleton.SingletonJob`, as the relay shards are). Groups
    (tenant, agent) replay concurrently, at most ``memory_sync_concurrency`` at once
    and each memory under a slot of the :class:`BackgroundShare`; inside a group one
    memory after the other, stopping at the first failure or one not yet due.

    A memory that can never be stored (SomaBrain refuses it, it no longer validates, or
    it failed ``processing_max_attempts`` times for a reason that is not an outage) is
    dead-lettered to ``somabrain.memory.remember.dlq`` and leaves its group's queue, so
    it never blocks the memories behind it. An outage (a transient error) is retried
    for ever, in order.
    """

    def __init__(
        self,
        settings: Settings,
        database: Database,
        client: SomaBrainClient,
        share: BackgroundShare | None = None,
        metrics: Metrics | None = None,
        dead_letters: DeadLetterWriter | None = None,
    ) -> None:
        self.settings = settings
        self.dead_letters = dead_letters or DeadLetterWriter(
            settings, database, metrics or Metrics()
        )
        self.topic = settings.topic(MEMORY_REMEMBER)
        self.database = database
        self.client = client
        self.share = share or BackgroundShare(1_000_000, 1_000_000)
        self.metrics = metrics
        self.pending = PendingMemoryStore()
        self.waiting: int | None = None
        """Rows of ``pending_memory`` not yet replayed, as of the last pass."""
        self.job = SingletonJob(
            settings,
            name="memory sync",
            lock_key=settings.memory_sync_lock_key,
            body=self._sync_forever,
        )

    async def sync_once(self) -> tuple[int, int]:
        """One pass (if this process gets the sync lock): (synced, still waiting)."""
        synced = await self.job.run_once(lambda lease: self._replay_all())
        async with self.database.connection() as conn:
            return synced or 0, await self._waiting(conn)

    async def _sync_forever(self, lease: Lease) -> None:
        """The job's body, under the lock: a pass every ``memory_sync_interval_seconds``."""
        lease.healthy()
        while not lease.stopping.is_set():
            synced = await self._replay_all()
            async with self.database.connection() as conn:
                waiting = await self._waiting(conn)
            if synced:
                logger.info(
                    "synced memories to SomaBrain", extra={"synced": synced, "waiting": waiting}
                )
            await sleep_unless(lease.stopping, self.settings.memory_sync_interval_seconds)

    async def _replay_all(self) -> int:
        """Replay every group, at most ``memory_sync_concurrency`` at once; memories synced."""
        async with self.database.connection() as conn:
            groups = await self.pending.groups(conn)
        limit = asyncio.Semaphore(self.settings.memory_sync_concurrency)

        async def replay(tenant: str, agent: str) -> int:
            async with limit:
                return await self._sync_group(tenant, agent)

        return sum(await asyncio.gather(*(replay(t, a) for t, a in groups)))

    async def _waiting(self, conn: psycopg.AsyncConnection[Any]) -> int:
        waiting = await self.pending.unsynced_count(conn)
        self.waiting = waiting
        if self.metrics is not None:
            self.metrics.memory_pending_rows.set(waiting)
        return waiting

    async def _sync_group(self, tenant: str, agent: str) -> int:
        """Replay one group's due memories in order until done, failed or not yet due."""
        synced = 0
        size = self.settings.memory_sync_batch_size
        while True:
            async with self.database.connection() as conn:
                batch = await self.pending.next_batch(conn, tenant, agent, size)
            for row_id, stored, due in batch:
                if not due:
                    return synced  # the oldest waits for its backoff: keep the order
                try:
                    record = MemoryRecord.model_validate(stored, strict=False)
                    async with self.share.slot():
                        await store_memory(self.client, record)
                except (asyncio.CancelledError, InfrastructureUnavailableError):
                    raise
                except TransientError as exc:  # SomaBrain is out: retry, in order
                    async with self.database.connection() as conn:
                        await self.pending.fail(conn, row_id, str(exc), timedelta(seconds=2.0))
                    return synced
                except Exception as exc:  # the memory itself, or a bug: bounded
                    async with self.database.connection() as conn:
                        attempts = await self.pending.fail(
                            conn, row_id, f"{type(exc).__name__}: {exc}", timedelta(seconds=2.0)
                        )
                    permanent = isinstance(exc, PermanentError | ValidationError)
                    if not permanent and attempts < self.settings.processing_max_attempts:
                        return synced
                    await self._give_up(row_id, stored, exc, attempts)
                    continue
                async with self.database.connection() as conn:
                    await self.pending.mark_synced(conn, row_id)
                synced += 1
            if len(batch) < size:
                return synced

    async def _give_up(self, row_id: int, stored: object, error: Exception, attempts: int) -> None:
        """Dead-letter a pending memory (its record as stored) and close its row."""
        key = None
        if isinstance(stored, dict):
            key = f"{stored.get('tenant_id')}:{stored.get('agent_id')}".encode()
        message = InboundMessage(self.topic, -1, -1, key, json.dumps(stored).encode())
        await self.dead_letters.write(
            message, error, attempts, idempotency_key=f"dlq:pending-memory:{row_id}"
        )
        async with self.database.connection() as conn:
            await self.pending.gave_up(conn, row_id, f"{type(error).__name__}: {error}")

    async def start(self) -> None:
        """Sync in the background, in the one process holding the sync lock."""
        await self.job.start()

    async def stop(self) -> None:
        """Stop syncing and release the lock."""
        await self.job.stop()
