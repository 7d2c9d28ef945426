"""The singleton job on the real PostgreSQL: one holder, taken over when its session dies."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from sa01.core.settings import Settings
from sa01.outbox.singleton import Lease, SingletonJob

pytestmark = pytest.mark.integration


class Recorder:
    """A body that notes which job runs, and whether it was cancelled."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.cancelled: list[str] = []

    def body(self, name: str) -> Callable[[Lease], Awaitable[None]]:
        async def run(lease: Lease) -> None:
            self.running.add(name)
            try:
                await lease.stopping.wait()
            except asyncio.CancelledError:
                self.cancelled.append(name)
                raise
            finally:
                self.running.discard(name)

        return run


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


def job(settings: Settings, name: str, recorder: Recorder) -> SingletonJob:
    return SingletonJob(
        settings,
        name=name,
        lock_key=settings.deferred_answer_lock_key,
        body=recorder.body(name),
        lock_retry_seconds=0.1,
        check_seconds=0.2,
    )


async def test_one_holder_runs_and_the_other_takes_over_when_its_session_is_killed(
    stack: Settings,
) -> None:
    recorder = Recorder()
    first, second = job(stack, "first", recorder), job(stack, "second", recorder)
    await first.start()
    try:
        await wait_for(lambda: recorder.running == {"first"})
        await second.start()
        await asyncio.sleep(0.5)
        assert recorder.running == {"first"}, "two holders at once"

        # The holder's session dies (as with kill -9 of its process).
        async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as c:
            await c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND granted AND ((classid::bigint << 32) | objid::bigint) = %s",
                (stack.deferred_answer_lock_key,),
            )

        await wait_for(lambda: recorder.running == {"second"})
        assert "first" in recorder.cancelled  # its watchdog stopped it
        assert second.active and not first.active
    finally:
        await second.stop()
        await first.stop()
    assert recorder.running == set()


async def test_run_once_returns_none_while_another_holds_the_lock(stack: Settings) -> None:
    recorder = Recorder()
    holder = job(stack, "holder", recorder)
    await holder.start()
    try:
        await wait_for(lambda: recorder.running == {"holder"})

        async def one_pass(lease: Lease) -> int:
            return 7

        assert await job(stack, "other", recorder).run_once(one_pass, wait_seconds=0.3) is None
    finally:
        await holder.stop()
    assert await job(stack, "other", recorder).run_once(one_pass) == 7


async def test_an_unreachable_database_is_named_without_its_password(stack: Settings) -> None:
    nowhere = stack.model_copy(
        update={"database_url": "postgresql://sa01:s3cret-passw0rd@127.0.0.1:1/none"}
    )
    lock = SingletonJob(nowhere, name="nowhere", lock_key=1).lock
    with pytest.raises(Exception) as raised:
        await lock.try_acquire()
    assert "127.0.0.1:1/none" in str(raised.value)
    assert "s3cret-passw0rd" not in str(raised.value)
