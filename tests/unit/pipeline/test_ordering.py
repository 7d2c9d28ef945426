"""Unit tests of SessionLanes (order per lane, concurrency across lanes) and OrderedAcks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from sa01.pipeline.ordering import OrderedAcks, SessionLanes

Job = Callable[[], Awaitable[None]]
# Generous bound on any single wait: a test that would hang fails instead.
WAIT = 5.0


async def settle(rounds: int = 20) -> None:
    """Let every ready task run (no timing involved: only yields to the loop)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --- SessionLanes ---------------------------------------------------------------------


async def test_jobs_of_one_lane_run_in_submission_order() -> None:
    lanes = SessionLanes(max_in_flight=100)
    events: list[tuple[str, int]] = []

    def make(index: int) -> Job:
        async def job() -> None:
            events.append(("start", index))
            # Yield several times: a concurrent job of the same lane would interleave here.
            await settle(3)
            events.append(("end", index))

        return job

    for index in range(20):
        await lanes.submit("session-a", make(index))
    await asyncio.wait_for(lanes.wait_idle(), WAIT)

    expected = [entry for index in range(20) for entry in (("start", index), ("end", index))]
    assert events == expected


async def test_a_later_job_of_a_lane_waits_for_the_earlier_one() -> None:
    lanes = SessionLanes(max_in_flight=10)
    release_first = asyncio.Event()
    first_started = asyncio.Event()
    second_started = asyncio.Event()

    async def first() -> None:
        first_started.set()
        await release_first.wait()

    async def second() -> None:
        second_started.set()

    await lanes.submit("lane", first)
    await lanes.submit("lane", second)
    await asyncio.wait_for(first_started.wait(), WAIT)
    await settle()
    assert not second_started.is_set()
    release_first.set()
    await asyncio.wait_for(second_started.wait(), WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)


async def test_jobs_of_different_lanes_overlap() -> None:
    lanes = SessionLanes(max_in_flight=10)
    a_started = asyncio.Event()
    b_started = asyncio.Event()
    finished: list[str] = []

    # A waits for B to have started and B waits for A: both can finish only if
    # they run at the same time.
    async def job_a() -> None:
        a_started.set()
        await b_started.wait()
        finished.append("a")

    async def job_b() -> None:
        b_started.set()
        await a_started.wait()
        finished.append("b")

    await lanes.submit("lane-a", job_a)
    await lanes.submit("lane-b", job_b)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert sorted(finished) == ["a", "b"]


async def test_max_in_flight_is_never_exceeded() -> None:
    bound = 3
    lanes = SessionLanes(max_in_flight=bound)
    running = 0
    peak = 0
    completed = 0

    def make() -> Job:
        async def job() -> None:
            nonlocal running, peak, completed
            running += 1
            peak = max(peak, running)
            assert lanes.in_flight <= bound
            await settle(2)
            running -= 1
            completed += 1

        return job

    for index in range(30):
        await lanes.submit(f"lane-{index % 7}", make())
        assert lanes.in_flight <= bound
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert completed == 30
    assert peak == bound  # the bound is reached (lanes do run concurrently) ...
    assert running == 0  # ... and never passed (checked by `peak` above)


async def test_submit_waits_while_the_bound_is_reached() -> None:
    lanes = SessionLanes(max_in_flight=2)
    release = asyncio.Event()
    started: list[str] = []

    def blocking(name: str) -> Job:
        async def job() -> None:
            started.append(name)
            await release.wait()

        return job

    await lanes.submit("a", blocking("a"))
    await lanes.submit("b", blocking("b"))
    assert lanes.in_flight == 2

    third = asyncio.create_task(lanes.submit("c", blocking("c")))
    await settle()
    assert not third.done()
    assert sorted(started) == ["a", "b"]

    release.set()
    await asyncio.wait_for(third, WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert sorted(started) == ["a", "b", "c"]
    assert lanes.in_flight == 0


async def test_queued_jobs_of_a_lane_count_towards_the_bound() -> None:
    lanes = SessionLanes(max_in_flight=2)
    release = asyncio.Event()

    async def blocked() -> None:
        await release.wait()

    async def quick() -> None:
        return None

    await lanes.submit("same", blocked)
    await lanes.submit("same", quick)
    waiting = asyncio.create_task(lanes.submit("other", quick))
    await settle()
    assert not waiting.done()
    release.set()
    await asyncio.wait_for(waiting, WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)


async def test_a_failing_job_does_not_stop_its_lane(caplog: pytest.LogCaptureFixture) -> None:
    lanes = SessionLanes(max_in_flight=10)
    ran: list[int] = []

    async def ok(index: int) -> None:
        ran.append(index)

    async def boom() -> None:
        ran.append(1)
        raise RuntimeError("job failed")

    await lanes.submit("lane", lambda: ok(0))
    await lanes.submit("lane", boom)
    await lanes.submit("lane", lambda: ok(2))
    await lanes.submit("lane", lambda: ok(3))
    await asyncio.wait_for(lanes.wait_idle(), WAIT)

    assert ran == [0, 1, 2, 3]
    assert lanes.in_flight == 0
    logged = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert any(isinstance(exc, RuntimeError) and str(exc) == "job failed" for exc in logged)


async def test_a_failing_job_releases_its_slot() -> None:
    lanes = SessionLanes(max_in_flight=1)

    async def boom() -> None:
        raise ValueError("x")

    ran = asyncio.Event()

    async def after() -> None:
        ran.set()

    await lanes.submit("a", boom)
    await asyncio.wait_for(lanes.submit("b", after), WAIT)
    await asyncio.wait_for(ran.wait(), WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)


async def test_wait_idle_returns_at_once_when_nothing_was_submitted() -> None:
    lanes = SessionLanes(max_in_flight=1)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert lanes.in_flight == 0


async def test_wait_idle_returns_only_once_all_jobs_are_done() -> None:
    lanes = SessionLanes(max_in_flight=10)
    gates = {name: asyncio.Event() for name in ("a", "b", "c")}
    done: list[str] = []

    def make(name: str) -> Job:
        async def job() -> None:
            await gates[name].wait()
            done.append(name)

        return job

    for name in gates:
        await lanes.submit(name, make(name))
    idle = asyncio.create_task(lanes.wait_idle())

    for name in ("b", "a"):
        gates[name].set()
        await settle()
        assert not idle.done()
    gates["c"].set()
    await asyncio.wait_for(idle, WAIT)
    assert sorted(done) == ["a", "b", "c"]
    assert lanes.in_flight == 0


async def test_lane_is_reusable_after_it_drained() -> None:
    lanes = SessionLanes(max_in_flight=4)
    seen: list[int] = []

    async def record(value: int) -> None:
        seen.append(value)

    await lanes.submit("lane", lambda: record(1))
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    await lanes.submit("lane", lambda: record(2))
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert seen == [1, 2]


async def test_cancel_stops_running_jobs() -> None:
    lanes = SessionLanes(max_in_flight=10)
    started = {"a": asyncio.Event(), "b": asyncio.Event()}
    cancelled: list[str] = []
    finished: list[str] = []
    queued_ran: list[str] = []
    never = asyncio.Event()

    def make(name: str) -> Job:
        async def job() -> None:
            started[name].set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise
            finished.append(name)

        return job

    async def queued() -> None:
        queued_ran.append("queued")

    await lanes.submit("a", make("a"))
    await lanes.submit("a", queued)
    await lanes.submit("b", make("b"))
    await asyncio.wait_for(started["a"].wait(), WAIT)
    await asyncio.wait_for(started["b"].wait(), WAIT)

    await asyncio.wait_for(lanes.cancel(), WAIT)
    await settle()

    assert sorted(cancelled) == ["a", "b"]
    assert finished == []
    assert queued_ran == []


# --- OrderedAcks ----------------------------------------------------------------------


class AckLog:
    """Records the acks of an OrderedAcks, in the order they happen."""

    def __init__(self) -> None:
        self.acks: list[tuple[Hashable, int]] = []

    def ack_for(self, partition: Hashable, offset: int) -> Callable[[], object]:
        def ack() -> None:
            self.acks.append((partition, offset))

        return ack

    def of(self, partition: Hashable) -> list[int]:
        return [offset for p, offset in self.acks if p == partition]


def test_acks_in_order_when_done_in_order() -> None:
    acks = OrderedAcks()
    log = AckLog()
    for offset in (10, 11, 12):
        acks.track(0, offset, log.ack_for(0, offset))
    assert acks.done(0, 10) == 1
    assert acks.done(0, 11) == 1
    assert acks.done(0, 12) == 1
    assert log.of(0) == [10, 11, 12]


def test_ack_never_passes_an_unfinished_offset() -> None:
    acks = OrderedAcks()
    log = AckLog()
    for offset in (1, 2, 3, 4):
        acks.track("p", offset, log.ack_for("p", offset))

    assert acks.done("p", 3) == 0
    assert acks.done("p", 2) == 0
    assert acks.done("p", 4) == 0
    assert log.acks == []
    assert acks.pending("p") == 4

    assert acks.done("p", 1) == 4
    assert log.of("p") == [1, 2, 3, 4]
    assert acks.pending("p") == 0


def test_acks_are_independent_per_partition() -> None:
    acks = OrderedAcks()
    log = AckLog()
    for partition in (0, 1):
        for offset in (5, 6):
            acks.track(partition, offset, log.ack_for(partition, offset))

    assert acks.done(1, 6) == 0
    assert acks.done(0, 5) == 1
    assert log.acks == [(0, 5)]
    assert acks.done(1, 5) == 2
    assert log.of(1) == [5, 6]
    assert acks.pending(0) == 1
    assert acks.pending(1) == 0


def test_gaps_in_offsets_do_not_block() -> None:
    # Offsets of a partition need not be contiguous (compaction, transaction markers).
    acks = OrderedAcks()
    log = AckLog()
    for offset in (3, 7, 20):
        acks.track(0, offset, log.ack_for(0, offset))
    assert acks.done(0, 3) == 1
    assert acks.done(0, 20) == 0
    assert acks.done(0, 7) == 2
    assert log.of(0) == [3, 7, 20]


def test_pending_counts_unacked_messages() -> None:
    acks = OrderedAcks()
    log = AckLog()
    assert acks.pending(0) == 0
    for offset in range(5):
        acks.track(0, offset, log.ack_for(0, offset))
    acks.track(1, 0, log.ack_for(1, 0))
    assert acks.pending(0) == 5
    assert acks.pending(1) == 1
    assert acks.pending(2) == 0

    acks.done(0, 2)  # done but not ackable yet: still pending
    assert acks.pending(0) == 5
    acks.done(0, 0)
    assert acks.pending(0) == 4
    acks.done(0, 1)
    assert acks.pending(0) == 2


def test_done_of_unknown_offset_returns_zero() -> None:
    acks = OrderedAcks()
    log = AckLog()
    assert acks.done(0, 99) == 0
    acks.track(0, 1, log.ack_for(0, 1))
    assert acks.done(0, 2) == 0
    assert acks.done(1, 1) == 0
    assert log.acks == []
    assert acks.pending(0) == 1


def test_done_twice_acks_once() -> None:
    acks = OrderedAcks()
    log = AckLog()
    acks.track(0, 1, log.ack_for(0, 1))
    acks.track(0, 2, log.ack_for(0, 2))
    assert acks.done(0, 1) == 1
    assert acks.done(0, 1) == 0
    assert log.of(0) == [1]


@st.composite
def offsets_and_order(
    draw: st.DrawFn,
) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    partitions = draw(st.integers(min_value=1, max_value=4))
    tracked: dict[int, list[int]] = {}
    for partition in range(partitions):
        offsets = draw(
            st.lists(st.integers(min_value=0, max_value=10_000), unique=True, max_size=25)
        )
        tracked[partition] = sorted(offsets)
    completions = [(p, offset) for p, offsets in tracked.items() for offset in offsets]
    order = draw(st.permutations(completions))
    return tracked, list(order)


@given(offsets_and_order())
@hypothesis_settings(database=None, max_examples=300)
def test_acks_follow_offset_order_for_any_completion_order(
    case: tuple[dict[int, list[int]], list[tuple[int, int]]],
) -> None:
    tracked, order = case
    acks = OrderedAcks()
    log = AckLog()
    for partition, offsets in tracked.items():
        for offset in offsets:  # consumed in offset order, as a consumer reads them
            acks.track(partition, offset, log.ack_for(partition, offset))

    completed: set[tuple[int, int]] = set()
    for partition, offset in order:
        before = len(log.acks)
        returned = acks.done(partition, offset)
        completed.add((partition, offset))
        assert returned == len(log.acks) - before
        # Every acked offset has every earlier tracked offset of its partition done.
        for acked_partition, acked_offset in log.acks:
            earlier = [o for o in tracked[acked_partition] if o <= acked_offset]
            assert all((acked_partition, o) in completed for o in earlier)
        # And nothing ackable is held back: the acked prefix is maximal.
        for p, offsets in tracked.items():
            acked = log.of(p)
            assert acked == offsets[: len(acked)]
            if len(acked) < len(offsets):
                assert (p, offsets[len(acked)]) not in completed
            assert acks.pending(p) == len(offsets) - len(acked)

    for partition, offsets in tracked.items():
        assert log.of(partition) == offsets
        assert acks.pending(partition) == 0


def test_a_redelivered_offset_still_tracked_joins_the_first_delivery() -> None:
    acks = OrderedAcks()
    acked: list[str] = []
    acks.track("p0", 7, lambda: acked.append("first"))
    acks.track("p0", 7, lambda: acked.append("redelivery"))
    acks.track("p0", 8, lambda: acked.append("next"))

    assert acks.pending("p0") == 2
    assert acks.done("p0", 7) == 1
    assert acked == ["first", "redelivery"]
    assert acks.done("p0", 8) == 1
    assert acks.pending("p0") == 0


async def test_cancel_releases_the_slots_of_queued_jobs() -> None:
    lanes = SessionLanes(max_in_flight=3)
    blocker = asyncio.Event()

    async def blocked() -> None:
        await blocker.wait()

    for _ in range(3):
        await lanes.submit("one-lane", blocked)
    await asyncio.sleep(0)
    assert lanes.in_flight == 3

    await lanes.cancel()

    assert lanes.in_flight == 0
    await asyncio.wait_for(lanes.wait_idle(), 1.0)
    ran: list[int] = []

    async def record() -> None:
        ran.append(1)

    await asyncio.wait_for(lanes.submit("other", record), 1.0)
    await asyncio.wait_for(lanes.wait_idle(), 1.0)
    assert ran == [1]


# --- fairness: shares per session and tenant, byte budget ---------------------------


async def test_a_hot_session_cannot_hold_every_slot() -> None:
    lanes = SessionLanes(max_in_flight=10, lane_share=0.2)
    gate = asyncio.Event()
    hot_done: list[int] = []
    other_done = asyncio.Event()

    def hot(index: int) -> Job:
        async def job() -> None:
            await gate.wait()
            hot_done.append(index)

        return job

    async def other() -> None:
        other_done.set()

    # 100 messages of one session first: without shares they would take all 10 slots
    # and the 101st submit would wait until the hot session freed one.
    for index in range(100):
        await asyncio.wait_for(lanes.submit("hot", hot(index)), WAIT)
    assert lanes.in_flight == 2  # 20% of 10 slots
    assert lanes.parked == 98
    await asyncio.wait_for(lanes.submit("quiet", other), WAIT)
    await asyncio.wait_for(other_done.wait(), WAIT)  # served while the hot one is stuck

    gate.set()
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert hot_done == list(range(100))  # order within the session holds
    assert lanes.parked == 0
    assert lanes.in_flight == 0


async def test_a_lane_of_one_slot_leaves_the_other_slots_to_lanes_that_can_run() -> None:
    # A burst over few sessions: with a share (2 of 4 slots per lane) two busy sessions
    # would hold every slot, one job running in each, and a third session would wait.
    lanes = SessionLanes(max_in_flight=4, lane_slots=1)
    gate = asyncio.Event()
    started: list[str] = []

    def job(lane: str, index: int) -> Job:
        async def run() -> None:
            started.append(f"{lane}{index}")
            await gate.wait()

        return run

    for index in range(10):
        for lane in ("a", "b"):
            await asyncio.wait_for(lanes.submit(lane, job(lane, index)), WAIT)
    assert (lanes.in_flight, lanes.parked) == (2, 18)  # one slot each: the running job
    for lane in ("c", "d"):
        await asyncio.wait_for(lanes.submit(lane, job(lane, 0)), WAIT)
    await settle()
    assert sorted(started) == ["a0", "b0", "c0", "d0"]  # four sessions run at once
    fifth = asyncio.create_task(lanes.submit("e", job("e", 0)))
    await settle()
    assert not fifth.done()  # every slot runs a job: the bound still holds
    gate.set()
    await asyncio.wait_for(fifth, WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert [name for name in started if name[0] == "a"] == [f"a{i}" for i in range(10)]
    assert (lanes.in_flight, lanes.parked) == (0, 0)


def test_a_lane_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        SessionLanes(max_in_flight=4, lane_slots=0)


async def test_shares_may_be_of_fewer_slots_than_the_bound() -> None:
    # A background agent's lanes: far more slots than its read-ahead (submit never
    # waits), shares of the read-ahead.
    lanes = SessionLanes(max_in_flight=1000, lane_share=0.2, share_base=10)
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()

    for _ in range(30):
        await asyncio.wait_for(lanes.submit("hot", job), WAIT)
    assert (lanes.in_flight, lanes.parked) == (2, 28)  # 20% of 10, not of 1000
    assert lanes.parked_bytes == 0
    gate.set()
    await asyncio.wait_for(lanes.wait_idle(), WAIT)


async def test_a_tenant_holds_at_most_its_share_across_its_sessions() -> None:
    lanes = SessionLanes(max_in_flight=10, group_share=0.3)
    gate = asyncio.Event()
    peak = 0
    running = 0

    def job_of_a() -> Job:
        async def job() -> None:
            nonlocal peak, running
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1

        return job

    for index in range(20):
        await asyncio.wait_for(lanes.submit(f"a-{index}", job_of_a(), group="tenant-a"), WAIT)
    await settle()
    assert lanes.in_flight == 3
    b_done = asyncio.Event()

    async def job_of_b() -> None:
        b_done.set()

    await asyncio.wait_for(lanes.submit("b-0", job_of_b, group="tenant-b"), WAIT)
    await asyncio.wait_for(b_done.wait(), WAIT)
    gate.set()
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert peak == 3


async def test_the_byte_budget_bounds_what_is_in_flight() -> None:
    lanes = SessionLanes(max_in_flight=100, max_bytes=1000)
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()

    for index in range(3):
        await asyncio.wait_for(lanes.submit(f"lane-{index}", job, size=400), WAIT)
        # the third waits: 800 + 400 is over the budget
        if index == 1:
            break
    assert lanes.bytes_in_flight == 800
    third = asyncio.create_task(lanes.submit("lane-2", job, size=400))
    await settle()
    assert not third.done()
    gate.set()
    await asyncio.wait_for(third, WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert lanes.bytes_in_flight == 0


async def test_one_message_larger_than_the_budget_still_passes_alone() -> None:
    lanes = SessionLanes(max_in_flight=10, max_bytes=100)
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    await asyncio.wait_for(lanes.submit("lane", job, size=5000), WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)
    assert ran == [1]


async def test_submit_waits_once_too_many_bytes_are_parked() -> None:
    lanes = SessionLanes(max_in_flight=10, lane_share=0.1, max_parked_bytes=1000)
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()

    for _ in range(3):  # one admitted, two parked: 800 bytes parked
        await asyncio.wait_for(lanes.submit("hot", job, size=400), WAIT)
    third = asyncio.create_task(lanes.submit("hot", job, size=400))  # 1,200 parked
    await settle()
    assert not third.done()
    gate.set()
    await asyncio.wait_for(third, WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)


async def test_submit_waits_once_too_many_messages_are_parked() -> None:
    lanes = SessionLanes(max_in_flight=10, lane_share=0.1, max_parked=5)
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()

    for _ in range(6):  # one admitted, five parked
        await asyncio.wait_for(lanes.submit("hot", job), WAIT)
    seventh = asyncio.create_task(lanes.submit("hot", job))
    await settle()
    assert not seventh.done()
    gate.set()
    await asyncio.wait_for(seventh, WAIT)
    await asyncio.wait_for(lanes.wait_idle(), WAIT)


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2)), min_size=1, max_size=60),
    st.floats(0.05, 1.0),
    st.floats(0.05, 1.0),
)
def test_shares_keep_order_per_lane_and_finish_everything(
    plan: list[tuple[int, int]], lane_share: float, group_share: float
) -> None:
    async def scenario() -> None:
        lanes = SessionLanes(
            max_in_flight=6, lane_share=lane_share, group_share=group_share, max_parked=8
        )
        seen: dict[int, list[int]] = {}

        def make(lane: int, index: int) -> Job:
            async def job() -> None:
                await settle(1)
                seen.setdefault(lane, []).append(index)

            return job

        for index, (lane, group) in enumerate(plan):
            await asyncio.wait_for(lanes.submit(lane, make(lane, index), group=group), WAIT)
            assert lanes.in_flight <= 6
        await asyncio.wait_for(lanes.wait_idle(), WAIT)
        expected: dict[int, list[int]] = {}
        for index, (lane, _) in enumerate(plan):
            expected.setdefault(lane, []).append(index)
        assert seen == expected
        assert lanes.parked == 0

    asyncio.run(scenario())
