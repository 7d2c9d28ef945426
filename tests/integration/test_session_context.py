"""The Redis session context batches the calls made together, on the real Redis.

Guarantees tested: each call of a batch gets its own session's turns (oldest first, at
most ``session_context_turns``), an append is readable once it returned, the TTL is set,
the calls made together are one command each way, and a Redis that refuses fails every
call of the batch with ``ServiceUnavailableError``.
"""

from __future__ import annotations

import asyncio

import pytest

from sa01.core.errors import ServiceUnavailableError
from sa01.journeys.session_context import SessionContext
from tests.fix_services import ServiceEndpoints
from tests.fix_stack import make_settings


@pytest.fixture
async def context(services: ServiceEndpoints, test_id: str) -> SessionContext:
    return SessionContext(make_settings(services, test_id, session_context_turns=4))


async def _cleanup(context: SessionContext) -> None:
    keys = [key async for key in context.client.scan_iter(match=context.prefix + "*")]
    if keys:
        await context.client.delete(*keys)
    await context.close()


async def test_concurrent_sessions_are_one_command_each_way(context: SessionContext) -> None:
    batches: list[tuple[str, int]] = []
    read, write = context._read_batch, context._write_batch

    async def counted_read(keys: list[str]) -> object:
        batches.append(("read", len(keys)))
        return await read(keys)

    async def counted_write(writes: list[tuple[str, tuple[str, ...]]]) -> object:
        batches.append(("write", len(writes)))
        return await write(writes)

    context._reads._flush = counted_read  # type: ignore[assignment]
    context._writes._flush = counted_write  # type: ignore[assignment]
    try:
        sessions = [f"tenant:s{i}" for i in range(20)]
        for turn in range(3):
            await asyncio.gather(
                *(context.append(s, f"user: {s} {turn}", f"assistant: {turn}") for s in sessions)
            )
        recent = await asyncio.gather(*(context.recent(s) for s in sessions))
        for session, turns in zip(sessions, recent, strict=True):
            # bound 4: the last two exchanges, oldest first, only this session's
            expected = [f"user: {session} 1", "assistant: 1", f"user: {session} 2", "assistant: 2"]
            assert turns == expected
        assert batches == [("write", 20)] * 3 + [("read", 20)]
        ttl = await context.client.ttl(context.prefix + sessions[0])
        assert 0 < ttl <= context.ttl
        assert await context.recent("tenant:unknown") == []
    finally:
        await _cleanup(context)


async def test_a_session_reads_what_it_appended_before(context: SessionContext) -> None:
    try:

        async def lane(session: str) -> list[list[str]]:
            seen = []
            for turn in range(3):
                seen.append(await context.recent(session))
                await context.append(session, f"user: {turn}")
            return seen

        results = await asyncio.gather(*(lane(f"tenant:l{i}") for i in range(10)))
        for seen in results:
            assert seen == [[], ["user: 0"], ["user: 0", "user: 1"]]
    finally:
        await _cleanup(context)


async def test_redis_refusing_fails_every_call_of_the_batch(
    services: ServiceEndpoints, test_id: str
) -> None:
    # A port nothing listens on: the connection is refused.
    context = SessionContext(make_settings(services, test_id, redis_url="redis://127.0.0.1:9/0"))
    try:
        results = await asyncio.gather(
            *(context.recent(f"tenant:s{i}") for i in range(5)),
            *(context.append(f"tenant:s{i}", "user: x") for i in range(5)),
            return_exceptions=True,
        )
        assert len(results) == 10
        assert all(isinstance(r, ServiceUnavailableError) for r in results)
    finally:
        await context.close()


async def test_turns_keep_every_character(context: SessionContext) -> None:
    odd = 'quote " backslash \\ slash / tab \t nul \x00 é 🚀 {} []'
    try:
        await context.append("tenant:odd", odd, "")
        assert await context.recent("tenant:odd") == [odd, ""]
    finally:
        await _cleanup(context)
