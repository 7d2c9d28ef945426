"""Concurrency across sessions, order within a session, and acks that never skip.

:class:`SessionLanes` runs the jobs of one session one after the other and the jobs
of different sessions at the same time, with a bound on the jobs in flight.
:class:`OrderedAcks` acknowledges the offsets of each partition strictly in order:
an offset is acked only when it and every offset before it are done, so the
committed offset can never pass a message that was not processed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

__all__ = ["OrderedAcks", "SessionLanes"]

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class SessionLanes:
    """Runs jobs in order per lane key and concurrently across keys."""

    def __init__(self, max_in_flight: int) -> None:
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lanes: dict[Hashable, deque[Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Jobs submitted and not yet finished."""
        return self._in_flight

    async def submit(self, lane: Hashable, job: Job) -> None:
        """Queue ``job`` behind the lane's earlier jobs; waits while the bound is reached."""
        await self._slots.acquire()
        self._in_flight += 1
        self._idle.clear()
        queue = self._lanes.get(lane)
        if queue is not None:
            queue.append(job)
            return
        self._lanes[lane] = deque([job])
        task = asyncio.create_task(self._run_lane(lane), name=f"lane:{lane}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_lane(self, lane: Hashable) -> None:
        queue = self._lanes[lane]
        try:
            while queue:
                try:
                    await queue[0]()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("job of lane %r raised; jobs must handle their errors", lane)
                finally:
                    queue.popleft()
                    self._finish_one()
        finally:
            while queue:  # cancelled: the jobs still queued will never run
                queue.popleft()
                self._finish_one()
            del self._lanes[lane]

    def _finish_one(self) -> None:
        self._in_flight -= 1
        self._slots.release()
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until every submitted job has finished."""
        await self._idle.wait()

    async def cancel(self) -> None:
        """Cancel every lane and drop queued jobs (at shutdown; none of them is acked)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class _Entry:
    offset: int
    acks: list[Callable[[], object]]
    done: bool = False


class OrderedAcks:
    """Acks the offsets of each partition in order, once every earlier offset is done."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[_Entry]] = {}
        self._entries: dict[tuple[Hashable, int], _Entry] = {}

    def track(self, partition: Hashable, offset: int, ack: Callable[[], object]) -> None:
        """Register a message taken from ``partition``; ``ack`` is called when it may be.

        A redelivery of an offset still tracked joins the first delivery's entry.
        """
        existing = self._entries.get((partition, offset))
        if existing is not None:
            existing.acks.append(ack)
            return
        entry = _Entry(offset, [ack])
        self._queues.setdefault(partition, deque()).append(entry)
        self._entries[(partition, offset)] = entry

    def done(self, partition: Hashable, offset: int) -> int:
        """Mark a message processed; ack every leading done message; return how many."""
        entry = self._entries.pop((partition, offset), None)
        if entry is None:
            return 0
        entry.done = True
        queue = self._queues[partition]
        acked = 0
        while queue and queue[0].done:
            for ack in queue.popleft().acks:
                ack()
            acked += 1
        if not queue:
            del self._queues[partition]
        return acked

    def pending(self, partition: Hashable) -> int:
        """Messages of ``partition`` not yet acked."""
        return len(self._queues.get(partition, ()))
