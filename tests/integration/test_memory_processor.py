"""The memory processor on the real PostgreSQL and a SomaBrain loopback: it reads
``pending_memory`` only for a (tenant, agent) pair not known to have nothing waiting,
and a memory it keeps makes the pair's next ones queue behind it, in order."""

from __future__ import annotations

from typing import Any

import pytest

from loopback import FailureMode, SomaBrainServer
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.pending_memory import PendingMemoryStore
from sa01.pipeline.dead_lettering import InboundMessage
from sa01.pipeline.memory import MemoryProcessor
from sa01.providers.somabrain import SomaBrainClient
from schemas.codec import encode_message
from schemas.messages import MemoryRecord

pytestmark = pytest.mark.integration


class CountingStore(PendingMemoryStore):
    """The real statements, counting the ``has_unsynced`` reads."""

    def __init__(self) -> None:
        self.reads = 0

    async def has_unsynced(self, conn: Any, tenant: str, agent: str) -> bool:
        self.reads += 1
        return await super().has_unsynced(conn, tenant, agent)


def message(n: int, agent: str = "agent-1") -> InboundMessage:
    record = MemoryRecord(
        memory_id=f"tenant-a:{agent}:m-{n}",
        tenant_id="tenant-a",
        agent_id=agent,
        session_id="s1",
        content=f"memory {n}",
    )
    key = record.partition_key.encode()
    return InboundMessage("memory", 0, n, key, encode_message(record))


async def pending_ids(database: Database) -> list[str]:
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT idempotency_key FROM pending_memory WHERE NOT synced ORDER BY id"
        )
        return [str(row[0]) for row in await cur.fetchall()]


@pytest.fixture
async def processor(stack: Settings, somabrain: SomaBrainServer) -> Any:
    settings = stack.model_copy(update={"somabrain_url": somabrain.base_url})
    database = Database(settings)
    await database.open(wait=True)
    client = SomaBrainClient(settings, Metrics())
    processor = MemoryProcessor(settings, database, client, Metrics())
    processor.pending = CountingStore()
    try:
        yield processor
    finally:
        await client.close()
        await database.close()


async def test_a_pair_with_nothing_waiting_is_read_from_postgres_once(
    processor: MemoryProcessor, somabrain: SomaBrainServer
) -> None:
    store = processor.pending
    assert isinstance(store, CountingStore)
    for n in range(10):
        assert await processor.process(message(n)) == "stored"
    assert await processor.process(message(0, agent="agent-2")) == "stored"
    assert store.reads == 2, "one read per pair, not per memory"
    assert len(somabrain.memories()) == 11


async def test_a_kept_memory_makes_the_pairs_next_ones_queue_behind_it(
    processor: MemoryProcessor, somabrain: SomaBrainServer
) -> None:
    assert await processor.process(message(1)) == "stored"
    somabrain.set_mode(FailureMode.ERROR_500)
    assert await processor.process(message(2)) == "pending"
    somabrain.set_mode(FailureMode.OK)
    assert await processor.process(message(3)) == "pending", "stored ahead of memory 2"
    assert await processor.process(message(1, agent="agent-2")) == "stored"
    assert await pending_ids(processor.database) == ["tenant-a:agent-1:m-2", "tenant-a:agent-1:m-3"]


async def test_after_a_rebalance_rows_another_worker_kept_are_seen(
    processor: MemoryProcessor,
) -> None:
    assert await processor.process(message(1)) == "stored"
    # While another worker owned the partition it kept memory 2 of the pair.
    other = MemoryRecord.model_validate_json(message(2).value or b"")
    async with processor.database.connection() as conn:
        await PendingMemoryStore().add(conn, other)
    processor.clear_groups.clear()  # what a rebalance does (agents.memory)
    assert await processor.process(message(3)) == "pending"
    assert await pending_ids(processor.database) == ["tenant-a:agent-1:m-2", "tenant-a:agent-1:m-3"]
