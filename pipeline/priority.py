"""Replies first: background work takes what the replies leave of the worker.

The worker answers conversations and drains background work (memories, uploads,
backups, the memory sync) on one event loop, so background records compete with
replies for the same CPU. :class:`BackgroundShare` admits background jobs one slot
each:

* while no reply was in flight for ``hold_seconds``: up to ``idle_limit`` at once;
* while replies are flowing (one in flight, or one finished less than
  ``hold_seconds`` ago): up to a limit that adapts to the replies' own processing
  time. Each finished reply reports its duration (:meth:`foreground`); a slowly
  rising minimum of those durations is the baseline. When the recent average exceeds
  ``tolerance`` times the baseline, the limit halves (down to 0: background waits);
  otherwise it grows by a quarter slot per reply, up to ``busy_limit``.

Foreground work never waits for the share. A background job already running
finishes; the next one waits for a slot. The limits are
``SA01_BACKGROUND_MAX_IN_FLIGHT`` and ``SA01_BACKGROUND_MAX_IN_FLIGHT_BUSY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

__all__ = ["BackgroundShare"]

#: Weight of the newest reply in the recent average of reply durations.
RECENT_WEIGHT = 0.2
#: How fast the baseline (the minimum reply duration) rises, per reply observed.
BASELINE_DRIFT = 1.0005
#: Slots (fractional) the busy limit regains per reply that was on time.
RECOVERY_STEP = 0.25


class BackgroundShare:
    """Counts foreground work and admits background jobs within the current limit."""

    def __init__(
        self,
        idle_limit: int,
        busy_limit: int,
        *,
        tolerance: float = 2.0,
        hold_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_limit < 1 or busy_limit < 1:
            raise ValueError("background limits must be at least 1")
        self.idle_limit = idle_limit
        self.busy_limit = min(busy_limit, idle_limit)
        self.tolerance = tolerance
        self.hold_seconds = hold_seconds
        self.clock = clock
        self._adaptive = float(self.busy_limit)
        self._baseline: float | None = None
        self._recent: float | None = None
        self._foreground = 0
        self._last_foreground = float("-inf")
        self._running = 0
        self._changed = asyncio.Event()

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
        return int(self._adaptive) if self._busy() else self.idle_limit

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a foreground job (a reply) in flight; its duration adapts the busy limit."""
        self._foreground += 1
        started = self.clock()
        try:
            yield
        finally:
            self._foreground -= 1
            self._last_foreground = self.clock()
            self.observe(self._last_foreground - started)
            self._changed.set()

    def observe(self, seconds: float) -> None:
        """Adapt the busy limit to one reply's processing time."""
        baseline = seconds if self._baseline is None else self._baseline * BASELINE_DRIFT
        self._baseline = min(baseline, seconds)
        recent = seconds if self._recent is None else self._recent
        self._recent = recent * (1 - RECENT_WEIGHT) + seconds * RECENT_WEIGHT
        if self._recent > self.tolerance * self._baseline:
            self._adaptive = self._adaptive / 2 if self._adaptive >= 1 else 0.0
        else:
            self._adaptive = min(float(self.busy_limit), self._adaptive + RECOVERY_STEP)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one background slot for the duration of the block (waits for one)."""
        while self._running >= self.limit:
            self._changed.clear()
            wait = self.hold_seconds if self._foreground == 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._changed.set()
