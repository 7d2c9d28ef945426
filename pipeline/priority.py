"""Replies first: background work takes a bounded share of the worker's concurrency.

The worker answers conversations and drains background work (memories, uploads,
backups, the memory sync) on one event loop. A backlog of background records would
otherwise keep the loop busy on equal terms with replies. :class:`BackgroundShare`
admits background jobs one slot each: at most ``idle_limit`` at once while no
reply is being worked on, and at most ``busy_limit`` while any is. Foreground work
never waits for it; it only announces itself (:meth:`foreground`). A background job
already running finishes; the next one waits for a slot. The two limits are
``SA01_BACKGROUND_MAX_IN_FLIGHT`` and ``SA01_BACKGROUND_MAX_IN_FLIGHT_BUSY``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

__all__ = ["BackgroundShare"]


class BackgroundShare:
    """Counts foreground work and admits background jobs within the current limit."""

    def __init__(self, idle_limit: int, busy_limit: int) -> None:
        if idle_limit < 1 or busy_limit < 1:
            raise ValueError("background limits must be at least 1")
        self.idle_limit = idle_limit
        self.busy_limit = min(busy_limit, idle_limit)
        self._foreground = 0
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

    @property
    def limit(self) -> int:
        """The number of background jobs admitted at once right now."""
        return self.busy_limit if self._foreground else self.idle_limit

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a foreground job (a reply) in flight for the duration of the block."""
        self._foreground += 1
        try:
            yield
        finally:
            self._foreground -= 1
            if self._foreground == 0:
                self._wake()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one background slot for the duration of the block (waits for one)."""
        while self._running >= self.limit:
            self._changed.clear()
            await self._changed.wait()
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
