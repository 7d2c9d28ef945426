"""Replies first: background work takes what the replies leave of the worker.

The worker answers conversations and drains background work (memories, uploads,
backups, the memory sync) on one event loop, so background records compete with
replies for the same CPU. :class:`BackgroundShare` admits background jobs one slot
each:

* while no reply was in flight for ``hold_seconds``: up to ``idle_limit`` at once;
* while replies are flowing (one in flight, or one finished less than
  ``hold_seconds`` ago): up to a limit that follows the event loop's lag, sampled
  every ``sample_seconds`` by :meth:`start`'s task (how late a timer fires is how long
  any reply's next step waits for the loop). When the recent lag exceeds
  ``max_lag_seconds`` the limit halves, down to 0 (background waits); when it is
  under half of it the limit grows by one slot per sample, up to ``busy_limit``.

A concurrency bound alone does not bound CPU (with a fast dependency a few jobs can
take the whole loop): the loop's lag is what delays replies, so it is what is
measured. Foreground work never waits for the share. A background job already
running finishes; the next one waits for a slot. The limits are
``SA01_BACKGROUND_MAX_IN_FLIGHT`` and ``SA01_BACKGROUND_MAX_IN_FLIGHT_BUSY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

__all__ = ["BackgroundShare"]

#: Weight of the newest sample in the recent average of the loop's lag.
RECENT_WEIGHT = 0.3


class BackgroundShare:
    """Counts foreground work and admits background jobs within the current limit."""

    def __init__(
        self,
        idle_limit: int,
        busy_limit: int,
        *,
        max_lag_seconds: float = 0.005,
        sample_seconds: float = 0.02,
        hold_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_limit < 1 or busy_limit < 1:
            raise ValueError("background limits must be at least 1")
        self.idle_limit = idle_limit
        self.busy_limit = min(busy_limit, idle_limit)
        self.max_lag_seconds = max_lag_seconds
        self.sample_seconds = sample_seconds
        self.hold_seconds = hold_seconds
        self.clock = clock
        self._adaptive = self.busy_limit
        self._lag = 0.0
        self._sampler: asyncio.Task[None] | None = None
        self._foreground = 0
        self._last_foreground = float("-inf")
        self._running = 0
        self._woken = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def running(self) -> int:
        """Background jobs holding a slot."""
        return self._running

    @property
    def foreground_in_flight(self) -> int:
        """Foreground jobs announced and not finished."""
        return self._foreground

    def _busy(self) -> bool:
        return self._foreground > 0 or self.clock() - self._last_foreground < self.hold_seconds

    @property
    def limit(self) -> int:
        """The number of background jobs admitted at once right now."""
        return self._adaptive if self._busy() else self.idle_limit

    @property
    def loop_lag_seconds(self) -> float:
        """The recent average of how late the sampler's timer fired."""
        return self._lag

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a foreground job (a reply) in flight for the duration of the block."""
        self._foreground += 1
        try:
            yield
        finally:
            self._foreground -= 1
            self._last_foreground = self.clock()
            if self._foreground == 0 and self._waiters:
                # The idle share applies once no reply was seen for hold_seconds.
                asyncio.get_running_loop().call_later(self.hold_seconds, self._wake)

    def observe_lag(self, seconds: float) -> None:
        """Adapt the busy limit to one sample of the loop's lag."""
        self._lag = self._lag * (1 - RECENT_WEIGHT) + seconds * RECENT_WEIGHT
        if self._lag > self.max_lag_seconds:
            self._adaptive //= 2
        elif self._lag < self.max_lag_seconds / 2 and self._adaptive < self.busy_limit:
            self._adaptive += 1
            self._wake()

    async def start(self) -> None:
        """Sample the loop's lag in the background."""
        self._sampler = asyncio.create_task(self._sample(), name="background-share-lag")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None

    async def _sample(self) -> None:
        while True:
            started = self.clock()
            await asyncio.sleep(self.sample_seconds)
            self.observe_lag(max(0.0, self.clock() - started - self.sample_seconds))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one background slot for the duration of the block (waits for one).

        Waiters queue in order and are woken one per free slot (thousands of queued
        memories must not all wake on every change).
        """
        while self._running + self._woken >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._woken -= 1
                    self._wake()
                raise
            self._woken -= 1
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._wake()

    def _wake(self) -> None:
        """Wake as many queued jobs as there are free slots."""
        free = self.limit - self._running - self._woken
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
                free -= 1
