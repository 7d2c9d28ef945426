"""Memory sync on the real PostgreSQL and a SomaBrain loopback: a pending memory that can
never be stored is dead-lettered and leaves its group's queue; the memories behind it
are replayed (issue 12: a 4xx used to block its tenant and agent for ever)."""

from __future__ import annotations

import json

import pytest

from loopback import FailureMode, SomaBrainServer
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.pending_memory import PendingMemoryStore
from sa01.pipeline.memory import MemorySync
from sa01.providers.somabrain import SomaBrainClient
from schemas.messages import MemoryRecord

pytestmark = pytest.mark.integration


def record(n: int) -> MemoryRecord:
    return MemoryRecord(
        memory_id=f"tenant-a:m-{n}",
        tenant_id="tenant-a",
        agent_id="agent-1",
        session_id="s1",
        content=f"memory {n}",
    )


async def test_a_memory_somabrain_refuses_or_that_no_longer_validates_blocks_nobody(
    stack: Settings, somabrain: SomaBrainServer
) -> None:
    settings = stack.model_copy(update={"somabrain_url": somabrain.base_url})
    database = Database(settings)
    await database.open(wait=True)
    client = SomaBrainClient(settings, Metrics())
    sync = MemorySync(settings, database, client)
    store = PendingMemoryStore()
    try:
        # SomaBrain refuses the memory (400): dead-lettered at the first try.
        somabrain.set_mode(FailureMode.BAD_REQUEST)
        async with database.connection() as conn:
            await store.add(conn, record(1))
        assert await sync.sync_once() == (0, 0)

        # A stored record that no longer validates, then a good one of the same group.
        somabrain.set_mode(FailureMode.OK)
        broken = record(2).model_dump(mode="json") | {"tenant_id": "tenant:a"}
        async with database.connection() as conn:
            await conn.execute(
                "INSERT INTO pending_memory (idempotency_key, tenant_id, agent_id, content,"
                " metadata) VALUES (%s, 'tenant-a', 'agent-1', 'x', %s)",
                ("tenant-a:m-2", json.dumps({"record": broken})),
            )
            await store.add(conn, record(3))
        assert await sync.sync_once() == (1, 0)

        assert [m.key for m in somabrain.memories("tenant-a")] == ["tenant-a:m-3"]
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT topic, error_class FROM dead_letter_message ORDER BY id"
            )
            dead = await cur.fetchall()
            cur = await conn.execute(
                "SELECT count(*) FROM outbox_message WHERE topic = %s",
                (settings.topic("somabrain.memory.remember.dlq"),),
            )
            published = (await cur.fetchone() or (0,))[0]
        assert [d[0] for d in dead] == [settings.topic("somabrain.memory.remember")] * 2
        assert dead[0][1] == "sa01.providers.somabrain.SomaBrainRequestError"
        assert dead[1][1] == "pydantic_core._pydantic_core.ValidationError"
        assert published == 2
    finally:
        await client.close()
        await database.close()
