"""Every started relay refreshes its backlog gauges on a timer, whatever its loop does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.relay import BACKLOG_REFRESH_SECONDS, OutboxRelay, _Run


class FakeDatabase:
    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[object]:
        yield object()


class CountingStore:
    """``pending_count`` answers 1, 2, 3, ... (after ``failures`` failures)."""

    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self.failures = failures

    async def pending_count(self, conn: object) -> tuple[int, float]:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("PostgreSQL is not reachable")
        return self.calls, float(self.calls) / 2


def relay_with(
    store: CountingStore, settings: Settings | None = None
) -> tuple[OutboxRelay, Metrics]:
    metrics = Metrics()
    relay = OutboxRelay(settings or Settings(), FakeDatabase(), metrics)  # type: ignore[arg-type]
    relay.store = store  # type: ignore[assignment]
    relay.backlog_refresh_seconds = 0.02
    return relay, metrics


def active_with(relay: OutboxRelay, batch: Callable[[], Awaitable[int]]) -> None:
    """Make every shard of ``relay`` take its lock and serve at once, publishing with
    ``batch`` (rows published; -1 for a broker failure)."""
    for shard in relay.shards:
        lock = shard.job.lock

        async def nothing() -> None:
            return None

        async def taken() -> bool:
            return True

        @contextlib.asynccontextmanager
        async def publishing() -> AsyncIterator[None]:
            yield None

        async def publish(publisher: object) -> _Run:
            published = await batch()
            return _Run(max(published, 0), broker_failed=published < 0)

        lock.try_acquire = taken  # type: ignore[method-assign]
        lock.check = nothing  # type: ignore[method-assign]
        lock.release = nothing  # type: ignore[method-assign]
        shard._publishing = publishing  # type: ignore[method-assign,assignment]
        shard._publish_batches = publish  # type: ignore[method-assign,assignment]


async def run_for_a_while(relay: OutboxRelay) -> None:
    await relay.start()
    await asyncio.sleep(0.3)
    await relay.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("outbox-")]


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
async def test_an_active_relay_refreshes_the_gauges_in_every_state_of_its_loop(
    batch: Callable[[], Awaitable[int]],
) -> None:
    store = CountingStore()
    relay, metrics = relay_with(store)
    active_with(relay, batch)

    await run_for_a_while(relay)

    assert store.calls >= 3
    assert gauges(metrics) == (store.calls, store.calls / 2)


async def test_a_relay_that_cannot_become_active_still_refreshes_them() -> None:
    # The lock's connection fails (as the publisher's start does while Kafka is down):
    # the relay backs off and retries, never active.
    store = CountingStore()
    nowhere = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    relay, metrics = relay_with(store, nowhere)

    await run_for_a_while(relay)

    assert not relay.active
    assert store.calls >= 3
    assert gauges(metrics)[0] == store.calls


async def test_a_failed_refresh_keeps_the_loop_and_the_timer_running() -> None:
    store = CountingStore(failures=2)
    relay, metrics = relay_with(store)
    batches = 0

    async def counted() -> int:
        nonlocal batches
        batches += 1
        return await busy()

    active_with(relay, counted)

    await run_for_a_while(relay)

    assert store.calls >= 4 and batches > 10
    assert gauges(metrics)[0] == store.calls
