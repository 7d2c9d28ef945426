"""The memory journey: store each MemoryRecord in SomaBrain, or keep it in PostgreSQL.

Order per tenant and agent is kept: while older memories of the pair wait in
``pending_memory``, newer ones queue behind them. With PostgreSQL down as well the
message is not acked: it waits, nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

import psycopg

from core.errors import InfrastructureUnavailableError, PermanentError, TransientError
from core.metrics import Metrics
from core.settings import Settings
from outbox.database import Database
from outbox.pending_memory import PendingMemoryStore
from pipeline.dead_letters import DeadLetterWriter, InboundMessage
from providers.somabrain import SomaBrainClient
from schemas.codec import decode_message
from schemas.messages import MemoryRecord

__all__ = ["MemoryProcessor", "MemorySync"]

logger = logging.getLogger(__name__)


class MemoryProcessor:
    """Processes one record of ``somabrain.memory.remember``; :meth:`process` never raises."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        client: SomaBrainClient,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.database = database
        self.client = client
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.pending = PendingMemoryStore()

    async def process(self, message: InboundMessage) -> str:
        """``stored``, ``pending`` or ``dead_lettered``; waits while PostgreSQL is down."""
        try:
            record = decode_message(MemoryRecord, message.value)
        except PermanentError as exc:
            await self._wait_for(self.dead_letters.write, message, exc, 1)
            return "dead_lettered"
        while True:
            try:
                return await self._store(message, record)
            except InfrastructureUnavailableError as exc:
                logger.warning("memory %s waits for %s", record.memory_id, exc.service)
                await asyncio.sleep(self.settings.infrastructure_retry_max_seconds / 5)

    async def _store(self, message: InboundMessage, record: MemoryRecord) -> str:
        async with self.database.connection() as conn:
            backlog = await self.pending.has_unsynced(conn, record.tenant_id, record.agent_id)
        if not backlog:
            try:
                await self.client.remember(record)
                return "stored"
            except TransientError as exc:
                logger.info("SomaBrain unavailable, memory %s kept: %s", record.memory_id, exc)
            except PermanentError as exc:
                await self.dead_letters.write(message, exc, 1)
                return "dead_lettered"
        async with self.database.connection() as conn:
            await self.pending.add(conn, record)
        return "pending"

    async def _wait_for(self, operation: object, *args: object) -> None:
        while True:
            try:
                await operation(*args)  # type: ignore[operator]
                return
            except InfrastructureUnavailableError:
                await asyncio.sleep(1.0)


class MemorySync:
    """Replays ``pending_memory`` into SomaBrain in order per tenant and agent, each once."""

    def __init__(self, settings: Settings, database: Database, client: SomaBrainClient) -> None:
        self.settings = settings
        self.database = database
        self.client = client
        self.pending = PendingMemoryStore()
        self.lock_key = settings.memory_sync_lock_key
        self._task: asyncio.Task[None] | None = None

    async def sync_once(self) -> tuple[int, int]:
        """One pass (if this process gets the sync lock): (synced, still waiting)."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.settings.database_url,
                autocommit=True,
                connect_timeout=5,
                options=f"-c search_path={self.settings.database_schema}",
            )
        except psycopg.OperationalError as exc:
            raise InfrastructureUnavailableError("postgres", str(exc)) from exc
        async with conn:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,))
            row = await cur.fetchone()
            if not row or not row[0]:
                return 0, await self.pending.unsynced_count(conn)
            synced = 0
            for tenant, agent in await self.pending.groups(conn):
                synced += await self._sync_group(conn, tenant, agent)
            return synced, await self.pending.unsynced_count(conn)

    async def _sync_group(
        self, conn: psycopg.AsyncConnection[object], tenant: str, agent: str
    ) -> int:
        synced = 0
        batch = await self.pending.next_batch(
            conn, tenant, agent, self.settings.memory_sync_batch_size
        )
        for row_id, record, due in batch:
            if not due:
                break  # the oldest waits for its backoff: keep the order
            try:
                await self.client.remember(record)
            except (TransientError, PermanentError) as exc:
                await self.pending.fail(conn, row_id, str(exc), timedelta(seconds=2.0))
                break
            await self.pending.mark_synced(conn, row_id)
            synced += 1
        return synced

    async def start(self) -> None:
        """Sync in the background every ``memory_sync_interval_seconds``."""
        self._task = asyncio.create_task(self._run(), name=f"memory-sync-{uuid.uuid4().hex[:6]}")

    async def _run(self) -> None:
        while True:
            try:
                synced, waiting = await self.sync_once()
                if synced:
                    logger.info("synced %d memories to SomaBrain (%d waiting)", synced, waiting)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("memory sync paused: %s", exc)
            await asyncio.sleep(self.settings.memory_sync_interval_seconds)

    async def stop(self) -> None:
        """Stop syncing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
