"""ReadAheadConsumer's choice of partitions per fetch, and ReadAhead's throttling.

The parent's ``_getmany`` (Faust's threaded aiokafka fetch) is replaced by a recorder
here: what is checked is which partitions each call asks for. The read-ahead against a
real broker and a slow SomaBrain is in tests/faults/test_memory_backlog.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from faust.types import TP

from sa01.core.metrics import Metrics
from streams.gaps import GapTrackingConsumer
from streams.read_ahead import THROTTLED_FETCH_WAIT_SECONDS, ReadAhead, ReadAheadConsumer

CONVERSATION = [TP("conversation.inbound", p) for p in range(2)]
MEMORY = [TP("somabrain.memory.remember", p) for p in range(2)]


class Fetches:
    """Stands in for Faust's fetch: records each call; answers from ``buffered``."""

    def __init__(self) -> None:
        self.calls: list[tuple[set[TP], float]] = []
        self.buffered: dict[TP, list[Any]] = {}

    async def fetch(self, active: set[TP], timeout: float) -> dict[TP, list[Any]]:
        self.calls.append((set(active), timeout))
        return {tp: records for tp, records in self.buffered.items() if tp in active}


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> Fetches:
    recorder = Fetches()

    async def _getmany(self: Any, active: set[TP], timeout: float) -> dict[TP, list[Any]]:
        return await recorder.fetch(active, timeout)

    monkeypatch.setattr(GapTrackingConsumer, "_getmany", _getmany)
    return recorder


def consumer() -> ReadAheadConsumer:
    fetch = ReadAheadConsumer.__new__(ReadAheadConsumer)  # no Faust app needed for _getmany
    fetch.throttled = set()
    fetch.background_topics = frozenset({"somabrain.memory.remember"})
    fetch._background_owed = False
    return fetch


async def test_buffered_foreground_records_are_handed_out_before_background_ones(
    fetches: Fetches,
) -> None:
    fetch = consumer()
    fetches.buffered = {CONVERSATION[0]: ["reply me"], MEMORY[0]: ["m"] * 100}
    everything = {*CONVERSATION, *MEMORY}

    first = await fetch._getmany(everything, 1.0)
    second = await fetch._getmany(everything, 1.0)

    assert first == {CONVERSATION[0]: ["reply me"]}
    assert fetches.calls[0] == (set(CONVERSATION), 0.0)  # what is buffered, no waiting
    # The next call owes the background a batch: every partition, with the full wait.
    assert set(second) == {CONVERSATION[0], MEMORY[0]}
    assert fetches.calls[-1] == (everything, 1.0)


async def test_without_foreground_records_one_call_fetches_everything(fetches: Fetches) -> None:
    fetch = consumer()
    fetches.buffered = {MEMORY[1]: ["m"]}
    everything = {*CONVERSATION, *MEMORY}

    assert await fetch._getmany(everything, 1.0) == {MEMORY[1]: ["m"]}
    assert fetches.calls == [(set(CONVERSATION), 0.0), (everything, 1.0)]


async def test_throttled_partitions_are_left_out_and_never_all_fetched(fetches: Fetches) -> None:
    fetch = consumer()
    fetch.throttle(set(MEMORY))
    await fetch._getmany({*CONVERSATION, *MEMORY}, 1.0)
    assert fetches.calls == [(set(CONVERSATION), THROTTLED_FETCH_WAIT_SECONDS)]

    fetches.calls.clear()
    fetch.throttled = {*CONVERSATION, *MEMORY}
    # An empty set would make aiokafka hand out every partition: no fetch at all.
    assert await fetch._getmany({*CONVERSATION, *MEMORY}, 0.01) == {}
    assert fetches.calls == []

    fetch.unthrottle({*CONVERSATION, *MEMORY})
    assert fetch.throttled == set()


async def test_while_a_partition_is_throttled_a_fetch_waits_briefly_so_its_release_counts_soon(
    fetches: Fetches,
) -> None:
    """Faust asks with a one-second wait. A worker reading only background topics had
    nothing else to wake that wait: after its agent caught up and released the topic, it
    sat idle for the rest of the second (a backlog drained 2-3 times slower in a
    `background` worker)."""
    fetch = consumer()
    fetch.background_topics = frozenset({MEMORY[0].topic, "upload.retry"})
    uploads = {TP("upload.retry", 0)}
    fetch.throttle(set(MEMORY))

    await fetch._getmany({*uploads, *MEMORY}, 1.0)  # nothing buffered for uploads
    fetch.unthrottle(set(MEMORY))  # the agent caught up meanwhile
    fetches.buffered = {MEMORY[0]: ["m"]}
    released = await fetch._getmany({*uploads, *MEMORY}, 1.0)

    assert fetches.calls[0] == (uploads, THROTTLED_FETCH_WAIT_SECONDS)
    assert THROTTLED_FETCH_WAIT_SECONDS <= 0.1
    assert released == {MEMORY[0]: ["m"]}
    assert fetches.calls[1] == ({*uploads, *MEMORY}, 1.0)  # released: Faust's own wait


class App:
    def __init__(self, fetch: ReadAheadConsumer, assigned: set[TP]) -> None:
        self.consumer = fetch
        fetch.assignment = lambda: set(assigned)  # type: ignore[method-assign]


@dataclass
class Held:
    """What ReadAhead reads of the agent's SessionLanes."""

    in_flight: int = 0
    parked: int = 0
    parked_bytes: int = 0


def read_ahead_on(fetch: ReadAheadConsumer, metrics: Metrics) -> ReadAhead:
    app = App(fetch, {*CONVERSATION, *MEMORY})
    return ReadAhead(
        app, "memory", MEMORY[0].topic, metrics, high=10, max_parked=100, max_parked_bytes=1000
    )


def paused(metrics: Metrics) -> float:
    return metrics.consumer_fetch_paused.labels(consumer="memory")._value.get()


def test_read_ahead_throttles_at_high_water_and_releases_at_half() -> None:
    fetch, metrics = consumer(), Metrics()
    read_ahead = read_ahead_on(fetch, metrics)

    read_ahead.update(Held(in_flight=9))
    assert fetch.throttled == set()
    read_ahead.update(Held(in_flight=10))
    assert fetch.throttled == set(MEMORY)  # the topic's partitions only
    assert paused(metrics) == 1
    read_ahead.update(Held(in_flight=6))
    assert fetch.throttled == set(MEMORY)  # above half: still throttled
    read_ahead.update(Held(in_flight=5))
    assert fetch.throttled == set()
    assert paused(metrics) == 0
    assert read_ahead.throttles == 1


def test_parked_records_count_against_the_parking_room_not_the_read_ahead() -> None:
    # One tenant's backlog over its share is parked: the others' records are still
    # fetched until the parking room (or its bytes) is full.
    fetch = consumer()
    read_ahead = read_ahead_on(fetch, Metrics())

    read_ahead.update(Held(in_flight=3, parked=99, parked_bytes=999))
    assert fetch.throttled == set()
    read_ahead.update(Held(in_flight=3, parked=100))
    assert fetch.throttled == set(MEMORY)
    read_ahead.update(Held(in_flight=3, parked=51))
    assert fetch.throttled == set(MEMORY)
    read_ahead.update(Held(in_flight=3, parked=50))
    assert fetch.throttled == set()
    read_ahead.update(Held(parked=1, parked_bytes=1000))
    assert fetch.throttled == set(MEMORY)


def test_read_ahead_ignores_an_app_without_the_worker_consumer() -> None:
    class ClientApp:
        consumer = object()

    read_ahead = ReadAhead(
        ClientApp(), "memory", MEMORY[0].topic, Metrics(), high=1, max_parked=1, max_parked_bytes=1
    )
    read_ahead.update(Held(in_flight=5))  # no error, nothing to throttle
