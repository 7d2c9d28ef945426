"""Concurrency across sessions, order within a session, and acks that never skip.

:class:`SessionLanes` runs the jobs of one session one after the other and the jobs
of different sessions at the same time, with a bound on the jobs (and bytes) in flight,
a number of slots per lane (one for a conversation session: the job it runs) and a
share per tenant, so that one hot session or tenant cannot hold every slot while the
others wait.
:class:`OrderedAcks` acknowledges the offsets of each partition strictly in order:
an offset is acked only when it and every offset before it are done, so the
committed offset can never pass a message that was not processed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

__all__ = ["OrderedAcks", "SessionLanes"]

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class _Job:
    run: Job
    lane: Hashable
    group: Hashable | None
    size: int
    admitted: bool = False


@dataclass(eq=False)
class _Lane:
    jobs: deque[_Job] = field(default_factory=deque)
    """Every unfinished job of the lane, in submission order (admitted ones first)."""
    waiting: deque[_Job] = field(default_factory=deque)
    """The tail of ``jobs`` not yet admitted."""
    admitted: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SessionLanes:
    """Runs jobs in order per lane key and concurrently across keys, fairly.

    Admission: a job takes one of ``max_in_flight`` slots and its ``size`` from the
    ``max_bytes`` budget (a job alone may exceed the budget). A lane may hold at most
    ``lane_slots`` slots (else ``lane_share`` of them), and a group of lanes (a tenant)
    at most ``group_share``: a job over its lane's or group's share is *parked*, holding no
    slot, and :meth:`submit` returns at once, so that the caller keeps reading and the
    other lanes keep flowing. Parked jobs are admitted in order as their lane's and
    group's jobs finish. :meth:`submit` waits only while every slot (or the byte budget)
    is taken, or while more than ``max_parked`` jobs (or ``max_parked_bytes``) are
    parked: memory stays bounded.

    A lane runs one job at a time, so ``lane_slots=1`` (the conversation's lanes) lets a
    lane hold only the job it runs: its later jobs are parked, and the slots go to other
    lanes that can run. Jobs admitted behind a running one would hold slots that no job
    uses (with a share of 10% of 256 slots, a burst over 100 sessions ran about 17
    sessions at a time).

    The shares are of ``share_base`` slots when given (a background agent's lanes have
    far more slots than its read-ahead, so that :meth:`submit` never waits: its shares
    are of the read-ahead), else of ``max_in_flight``.

    Why parking and not pausing the source partition: Faust drops the records of a
    partition paused while its fetched batch is being iterated, and does not fetch them
    again (see docs/decisions.md, D10).
    """

    def __init__(
        self,
        max_in_flight: int,
        *,
        lane_share: float = 1.0,
        lane_slots: int | None = None,
        group_share: float = 1.0,
        max_bytes: int | None = None,
        max_parked: int | None = None,
        max_parked_bytes: int | None = None,
        on_parked: Callable[[int], None] | None = None,
        share_base: int | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        base = share_base if share_base is not None else max_in_flight
        if lane_slots is not None and lane_slots < 1:
            raise ValueError(f"a lane needs at least one slot, not {lane_slots}")
        self.lane_limit = lane_slots if lane_slots is not None else max(1, int(base * lane_share))
        self.group_limit = max(1, int(base * group_share))
        self.max_bytes = max_bytes
        self.max_parked = max_parked if max_parked is not None else 16 * max_in_flight
        self.max_parked_bytes = max_parked_bytes
        self._on_parked = on_parked
        self._lanes: dict[Hashable, _Lane] = {}
        self._groups: dict[Hashable, int] = {}
        self._waiting_lanes: dict[Hashable, None] = {}  # insertion order: round robin
        self._tasks: set[asyncio.Task[None]] = set()
        self._admitted = 0
        self._bytes = 0
        self._waiting = 0
        self._waiting_bytes = 0
        self._submitted = 0
        self._progress = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Jobs holding a slot (admitted and not yet finished)."""
        return self._admitted

    @property
    def parked(self) -> int:
        """Jobs submitted but not yet admitted."""
        return self._waiting

    @property
    def parked_bytes(self) -> int:
        """The sizes of the parked jobs, summed."""
        return self._waiting_bytes

    @property
    def bytes_in_flight(self) -> int:
        """The sizes of the admitted jobs, summed."""
        return self._bytes

    async def submit(
        self,
        lane: Hashable,
        job: Job,
        *,
        group: Hashable | None = None,
        size: int = 0,
    ) -> None:
        """Queue ``job`` behind the lane's earlier jobs (see the class docstring)."""
        entry = _Job(job, lane, group, size)
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _Lane()
            task = asyncio.create_task(self._run_lane(lane, state), name="lane")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        state.jobs.append(entry)
        state.waiting.append(entry)
        if state.admitted < self.lane_limit:  # else its running job's end lists it
            self._waiting_lanes.setdefault(lane, None)
        self._waiting += 1
        self._waiting_bytes += size
        self._submitted += 1
        self._idle.clear()
        self._admit()
        while not entry.admitted and not (self._over_share(entry) and self._room_to_park()):
            progress = self._progress
            await progress.wait()
        self._report_parked()

    def _over_share(self, entry: _Job) -> bool:
        if self._lanes[entry.lane].admitted >= self.lane_limit:
            return True
        return entry.group is not None and self._groups.get(entry.group, 0) >= self.group_limit

    def _room_to_park(self) -> bool:
        if self._waiting > self.max_parked:
            return False
        return self.max_parked_bytes is None or self._waiting_bytes <= self.max_parked_bytes

    def _has_room(self, entry: _Job) -> bool:
        if self._admitted >= self.max_in_flight:
            return False
        if self.max_bytes is None or self._admitted == 0:
            return True
        return self._bytes + entry.size <= self.max_bytes

    def _admit(self) -> None:
        """Admit waiting jobs, lane by lane in turn, while slots and shares allow.

        Only lanes under their own share are listed in ``_waiting_lanes``: a lane that
        holds all its slots is listed again when one of its jobs ends (``_release``), so
        that a burst over many sessions, each running one job, costs no walk over them.
        """
        admitted_any = False
        for lane in list(self._waiting_lanes):
            state = self._lanes[lane]
            while state.waiting:
                entry = state.waiting[0]
                if self._over_share(entry):
                    break
                if not self._has_room(entry):
                    self._signal(admitted_any)
                    return
                state.waiting.popleft()
                self._take(state, entry)
                admitted_any = True
            del self._waiting_lanes[lane]
            if state.waiting and state.admitted < self.lane_limit:
                self._waiting_lanes[lane] = None  # to the back: the other lanes go first
        self._signal(admitted_any)

    def _take(self, state: _Lane, entry: _Job) -> None:
        entry.admitted = True
        state.admitted += 1
        state.wake.set()
        if entry.group is not None:
            self._groups[entry.group] = self._groups.get(entry.group, 0) + 1
        self._admitted += 1
        self._bytes += entry.size
        self._waiting -= 1
        self._waiting_bytes -= entry.size

    def _signal(self, changed: bool) -> None:
        if changed:
            self._progress.set()
            self._progress = asyncio.Event()
            self._report_parked()

    def _report_parked(self) -> None:
        if self._on_parked is not None:
            self._on_parked(self._waiting)

    def _release(self, state: _Lane, entry: _Job) -> None:
        if entry.admitted:
            state.admitted -= 1
            if state.waiting:
                self._waiting_lanes.setdefault(entry.lane, None)
            self._admitted -= 1
            self._bytes -= entry.size
            if entry.group is not None:
                left = self._groups[entry.group] - 1
                if left:
                    self._groups[entry.group] = left
                else:
                    del self._groups[entry.group]
        else:  # dropped at cancellation before it was admitted
            self._waiting -= 1
            self._waiting_bytes -= entry.size
        self._submitted -= 1
        if self._submitted == 0:
            self._idle.set()

    async def _run_lane(self, lane: Hashable, state: _Lane) -> None:
        try:
            while state.jobs:
                entry = state.jobs[0]
                while not entry.admitted:
                    state.wake.clear()
                    await state.wake.wait()
                try:
                    await entry.run()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("a lane's job raised; jobs must handle their errors")
                finally:
                    state.jobs.popleft()
                    self._release(state, entry)
                    self._admit()
                    self._signal(True)
        finally:
            while state.jobs:  # cancelled: the jobs still queued will never run
                entry = state.jobs.popleft()
                if not entry.admitted:
                    state.waiting.remove(entry)
                self._release(state, entry)
            self._waiting_lanes.pop(lane, None)
            if self._lanes.get(lane) is state:
                del self._lanes[lane]
            self._signal(True)

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
