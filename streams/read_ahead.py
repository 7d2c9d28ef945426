"""Background agents read ahead a bounded number of records; past it, their topic waits.

Faust fetches every topic with one consumer and hands each fetched batch to the agents
in one loop. A background agent that takes records faster than it finishes them (a
backlog of memories behind a fast SomaBrain, say) would pull its whole backlog into
the worker: thousands of records fetched, decoded and queued ahead of any conversation
message fetched after them, which then waits seconds for its turn (issue 13 measured
1-4 s). :class:`ReadAhead` bounds that: once the agent holds ``high`` records
(``SA01_BACKGROUND_READ_AHEAD``), or parks ``SA01_MAX_PARKED`` over their tenant's
share, its topic's partitions are left out of the fetch
(:meth:`ReadAheadConsumer.throttle`); once both are down to half they are fetched
again. The agent's stream never blocks (that would stop the fetch of every topic);
what was fetched before (at most one batch, ``SA01_FETCH_MAX_RECORDS``) still comes in.

Faust's own ``pause_partitions`` is not used: it takes the partitions out of the set
its fetch loop filters each batch with, so the paused partitions' records of the batch
being handed out are dropped (never processed, never committed: the partition stalls
until a restart). A throttled partition stays in that set; it is only left out of the
next fetch requests, and Faust's rebalance and table recovery keep their own pausing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Set
from typing import Protocol

from faust.transport.consumer import RecordMap
from faust.types import TP

from sa01.core.metrics import Metrics
from sa01.pipeline.ordering import SessionLanes
from streams.gaps import GapTrackingConsumer

__all__ = ["ReadAhead", "ReadAheadConsumer"]

#: How long a fetch waits while any partition is throttled (and how long a fetch with every
#: active partition throttled pauses) before the throttled set is looked at again. Faust
#: waits up to a second for records of the partitions it asked for: a worker reading only
#: background topics sat out that second after its agent had caught up and its topic was
#: released, with nothing left to work on (issue 13: a backlog drained 2-3 times slower
#: in a `background` worker than in one that also answered conversations).
THROTTLED_FETCH_WAIT_SECONDS = 0.05


class ReadAheadConsumer(GapTrackingConsumer):
    """The worker's consumer: O(1) gap tracking (``streams.gaps``), throttled partitions,
    and foreground records handed out before background ones.

    aiokafka hands out buffered records partition after partition, in the order their
    data arrived, up to ``SA01_FETCH_MAX_RECORDS`` per call: a conversation record
    fetched while thousands of memories sit in the buffer would wait until they are all
    handed out. So each call first takes what is buffered for the foreground topics
    (every topic not in ``background_topics``) without waiting; if there is any, it is
    the batch, and the next call takes from every partition (background work is never
    starved for more than one batch).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.throttled: set[TP] = set()
        self.background_topics: frozenset[str] = frozenset()
        self._background_owed = False

    def throttle(self, tps: Set[TP]) -> None:
        """Leave ``tps`` out of the next fetches (a batch being handed out is kept whole)."""
        self.throttled |= tps

    def unthrottle(self, tps: Set[TP]) -> None:
        """Fetch ``tps`` again."""
        self.throttled -= tps

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> RecordMap:
        if active_partitions is None:  # a client-only app
            return await super()._getmany(active_partitions, timeout)
        if self.throttled:
            fetched = active_partitions - self.throttled
            # A partition released while this fetch waits is fetched at the next call.
            timeout = min(timeout, THROTTLED_FETCH_WAIT_SECONDS)
        else:
            fetched = set(active_partitions)
        if not fetched:
            # An empty set would fetch every partition: wait, then let Faust ask again.
            await asyncio.sleep(timeout)
            return {}
        foreground = {tp for tp in fetched if tp.topic not in self.background_topics}
        if foreground and len(foreground) < len(fetched) and not self._background_owed:
            first = await super()._getmany(foreground, 0.0)
            if first:
                self._background_owed = True
                return first
        self._background_owed = False
        return await super()._getmany(fetched, timeout)


class _App(Protocol):
    @property
    def consumer(self) -> object: ...


class ReadAhead:
    """Throttles ``topic`` while its agent holds ``high`` records or parks ``max_parked``
    (or ``max_parked_bytes``); fetches it again once all are down to half.

    Records over their (tenant, agent) pair's or tenant's share are parked
    (:class:`~sa01.pipeline.ordering.SessionLanes`) and count against the parking room,
    not the read-ahead: one tenant's backlog fills its share and then parks, while the
    other tenants' records are still fetched and run.
    """

    def __init__(
        self,
        app: _App,
        consumer: str,
        topic: str,
        metrics: Metrics,
        *,
        high: int,
        max_parked: int,
        max_parked_bytes: int,
    ) -> None:
        if min(high, max_parked, max_parked_bytes) < 1:
            raise ValueError("the read-ahead and the parking room must be at least 1")
        self.app = app
        self.consumer = consumer
        self.topic = topic
        self.high = high
        self.max_parked = max_parked
        self.max_parked_bytes = max_parked_bytes
        self.metrics = metrics
        self.throttled: set[TP] = set()
        self.throttles = 0
        """How many times the topic was throttled (for tests and the log)."""

    def update(self, lanes: SessionLanes) -> None:
        """The agent's lanes changed: throttle or release its topic."""
        fetch = self.app.consumer
        if not isinstance(fetch, ReadAheadConsumer):
            return  # a client-only app (a command): it runs no agent
        full = (
            lanes.in_flight >= self.high
            or lanes.parked >= self.max_parked
            or lanes.parked_bytes >= self.max_parked_bytes
        )
        if full and not self.throttled:
            # Every partition of the topic this worker owns now (a later assignment's
            # partitions are added at the next throttle; a revoked one is harmless).
            tps = {tp for tp in fetch.assignment() if tp.topic == self.topic}
            if tps:
                fetch.throttle(tps)
                self.throttles += 1
                self._set(tps)
        elif self.throttled and (
            lanes.in_flight <= self.high // 2
            and lanes.parked <= self.max_parked // 2
            and lanes.parked_bytes <= self.max_parked_bytes // 2
        ):
            fetch.unthrottle(self.throttled)
            self._set(set())

    def _set(self, tps: set[TP]) -> None:
        self.throttled = tps
        self.metrics.consumer_fetch_paused.labels(consumer=self.consumer).set(1 if tps else 0)
