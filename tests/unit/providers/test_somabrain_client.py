"""The SomaBrain client against the loopback that behaves like the real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from loopback.somabrain_server import SomaBrainServer
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.somabrain import (
    MemoryNotStoredError,
    RecalledMemory,
    RememberOutcome,
    SomaBrainClient,
    rank_recalled,
)
from schemas.messages import MemoryRecord

pytestmark = pytest.mark.timeout(60)

TOKEN = "brain-token"


@pytest.fixture
def brain() -> Iterator[SomaBrainServer]:
    with SomaBrainServer(name="brain", token=TOKEN) as server:
        yield server


@pytest.fixture
async def client(brain: SomaBrainServer) -> AsyncIterator[SomaBrainClient]:
    settings = Settings(somabrain_url=brain.base_url, somabrain_token=TOKEN)
    somabrain = SomaBrainClient(settings, Metrics())
    try:
        yield somabrain
    finally:
        await somabrain.close()


def record(memory_id: str, content: str, tenant: str = "t1") -> MemoryRecord:
    return MemoryRecord(
        memory_id=memory_id,
        tenant_id=tenant,
        agent_id="agent",
        session_id="s1",
        content=content,
        metadata={"model": "m"},
    )


async def test_remember_puts_the_content_where_somabrain_indexes_it(
    brain: SomaBrainServer, client: SomaBrainClient
) -> None:
    assert await client.remember(record("m1", "the user drinks tea with lemon")) is (
        RememberOutcome.STORED
    )

    [stored] = brain.memories("t1")
    assert stored.namespace == "conversation"
    assert stored.value["text"] == "the user drinks tea with lemon"
    assert stored.payload["task"] == "the user drinks tea with lemon", "indexed text is the id"
    assert stored.value["content"] == stored.value["text"]
    assert (stored.value["session_id"], stored.value["agent_id"]) == ("s1", "agent")


async def test_recall_finds_long_term_memories_of_our_namespace_only(
    brain: SomaBrainServer, client: SomaBrainClient
) -> None:
    await client.remember(record("m1", "the user drinks tea with lemon"))
    await client.remember(record("m2", "the user drinks tea with lemon", tenant="t2"))
    brain.clear_working_memory()  # as after a restart: only long-term memory remains

    found = await client.recall("t1", "does the user like tea")
    assert [(m.key, m.layer) for m in found] == [("m1", "ltm")], "namespace must be sent"
    assert found[0].content == "the user drinks tea with lemon"
    assert await client.recall("t3", "tea") == []


async def test_recall_ranks_and_deduplicates_both_layers(
    brain: SomaBrainServer, client: SomaBrainClient
) -> None:
    for n in range(12):
        await client.remember(record(f"noise-{n}", f"weather report number {n}"))
    await client.remember(record("tea", "the user drinks tea with lemon"))
    await client.remember(record("coffee", "the user hates coffee"))

    found = await client.recall("t1", "tea lemon", top_k=3)

    assert [m.key for m in found] == ["tea"], (
        "one entry per key, working-memory items that share no word with the query dropped,"
        " and twelve unrelated working-memory items at 1.0 must not crowd out the hit"
    )
    assert found[0].layer == "ltm"
    assert found[0].score == 1.0


async def test_recall_reads_working_memory_when_long_term_has_nothing(
    brain: SomaBrainServer, client: SomaBrainClient
) -> None:
    await client.remember(record("tea", "the user drinks tea with lemon"))
    brain.set_backend_down(True)

    found = await client.recall("t1", "tea with honey")

    assert [(m.key, m.layer) for m in found] == [("tea", "wm")]
    assert found[0].score == pytest.approx(2 / 3), "re-scored by the query's words, not 1.0"


async def test_an_acknowledged_remember_counts_only_when_health_says_the_backend_is_up(
    brain: SomaBrainServer, client: SomaBrainClient
) -> None:
    brain.set_backend_down(True)
    with pytest.raises(MemoryNotStoredError, match="soma_fractal_memory unhealthy"):
        await client.remember(record("m1", "lost if we trusted the 200"))
    assert brain.memories() == []

    brain.set_backend_down(False)
    # The recovery race: the last reading before this ack said down, so the ack may not
    # count yet, although the reading taken after it says up.
    with pytest.raises(MemoryNotStoredError, match="soma_fractal_memory unhealthy"):
        await client.remember(record("m1", "acked right after the recovery"))
    brain.set_queue_for_replay(True)
    with pytest.raises(MemoryNotStoredError, match="queued for replay"):
        await client.remember(record("m1", "queued in SomaBrain's best-effort journal"))
    brain.set_queue_for_replay(False)

    brain.set_health_faults(unhealthy={"opa", "minio", "schema_registry"}, no_vector_store=True)
    assert await client.remember(record("m1", "stored")) is RememberOutcome.STORED
    assert [m.key for m in brain.memories()] == ["m1"]


async def test_a_health_reading_older_than_the_ack_is_not_trusted(
    brain: SomaBrainServer, client: SomaBrainClient
) -> None:
    reading = await client.health.read()
    assert reading.backend_up
    brain.set_backend_down(True)

    with pytest.raises(MemoryNotStoredError):
        await client.remember(record("m1", "the probe said up a moment ago"))


def test_rank_recalled_dedupes_by_key_and_prefers_long_term_on_ties() -> None:
    memories = [
        RecalledMemory("a", "wm", 1.0, "k1"),
        RecalledMemory("b", "ltm", 0.4, "k2"),
        RecalledMemory("a", "ltm", 1.0, "k1"),
        RecalledMemory("c", "wm", 0.5, "k3"),
        RecalledMemory("b", "wm", 0.9, "k2"),
    ]
    ranked = rank_recalled(memories, 2)
    assert [(m.key, m.layer, m.score) for m in ranked] == [("k1", "ltm", 1.0), ("k2", "wm", 0.9)]
    assert rank_recalled([], 3) == []
