"""The active relay refreshes its backlog gauges on a timer, whatever its loop does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from core.metrics import Metrics
from core.settings import Settings
from outbox.relay import BACKLOG_REFRESH_SECONDS, OutboxRelay


class FakeDatabase:
    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[object]:
        yield object()


class CountingStore:
    """``pending_count`` answers 1, 2, 3, ... (and fails when told to)."""

    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self.failures = failures

    async def pending_count(self, conn: object) -> tuple[int, float]:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("PostgreSQL is not reachable")
        return self.calls, float(self.calls) / 2


class FakeLockConnection:
    async def execute(self, query: str) -> None:
        return None


def relay_with(store: CountingStore) -> tuple[OutboxRelay, Metrics]:
    metrics = Metrics()
    relay = OutboxRelay(Settings(), FakeDatabase(), metrics)  # type: ignore[arg-type]
    relay.store = store  # type: ignore[assignment]
    relay.backlog_refresh_seconds = 0.02
    return relay, metrics


async def run_loop(relay: OutboxRelay, batch: Callable[[], Awaitable[int]]) -> None:
    relay._publish_one_batch = lambda publisher: batch()  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(relay._publish_until_stopped(None, FakeLockConnection()))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    relay._stopping.set()
    relay._wake.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "outbox-backlog"]


def gauges(metrics: Metrics) -> tuple[float, float]:
    pending = metrics.registry.get_sample_value("outbox_messages_pending")
    lag = metrics.registry.get_sample_value("outbox_relay_lag_seconds")
    assert pending is not None and lag is not None
    return pending, lag


def test_the_default_refresh_is_about_every_five_seconds() -> None:
    assert BACKLOG_REFRESH_SECONDS == 5.0


async def broker_down() -> int:
    await asyncio.sleep(0.01)
    return -1


async def busy() -> int:
    await asyncio.sleep(0.005)
    return 100


async def stuck() -> int:
    await asyncio.Event().wait()
    return 0


async def idle() -> int:
    return 0


@pytest.mark.parametrize("batch", [broker_down, busy, stuck, idle])
async def test_the_gauges_move_in_every_state_of_the_loop(
    batch: Callable[[], Awaitable[int]],
) -> None:
    store = CountingStore()
    relay, metrics = relay_with(store)

    await run_loop(relay, batch)

    assert store.calls >= 3
    assert gauges(metrics) == (store.calls, store.calls / 2)


async def test_a_failed_refresh_keeps_the_loop_and_the_timer_running() -> None:
    store = CountingStore(failures=2)
    relay, metrics = relay_with(store)
    batches = 0

    async def counted() -> int:
        nonlocal batches
        batches += 1
        return await busy()

    await run_loop(relay, counted)

    assert store.calls >= 4 and batches > 10
    assert gauges(metrics)[0] == store.calls
