"""Gap tracking (streams.gaps): commits reach one past the last acked offset, gaps in O(1).

Faust's own ``_add_gap`` and ``_new_offset`` run on one copy of the consumer's
bookkeeping and ours on another, for the same reads, acks and commits (the reads
replay what ``Consumer._drain_messages`` does; the acks what ``Consumer.ack`` does).
With acks in order (as this project acks), every commit of ours reaches one past the
last acked offset, and is never behind Faust's.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from intervaltree import IntervalTree  # type: ignore[import-untyped]

from streams.gaps import GapTrackingConsumer, OffsetGaps, ReadOffsets

PARTITION = TP("t", 0)


class Bookkeeping:
    """The consumer state the gap methods read and write, driven like Faust drives it."""

    def __init__(self, gaps: Any, committed: int | None, implementation: Any, reads: Any) -> None:
        self.state = SimpleNamespace(
            _acked=defaultdict(list),
            _acked_index=defaultdict(set),
            _gap=defaultdict(gaps),
            _committed_offset=defaultdict(lambda: None),
            _read_offset=reads,
            _held_at={},
        )
        self.implementation = implementation
        # ``perform_seek``: Faust reads from the committed offset (its read offset is that
        # offset); ours records it as the read position (nothing before it unread).
        self.state._read_offset[PARTITION] = committed
        if committed:
            self.state._committed_offset[PARTITION] = committed
            if isinstance(reads, ReadOffsets):
                reads.at_position(PARTITION, committed)

    async def read(self, offset: int) -> None:
        """``_drain_messages``: a record arrives; the hole before it becomes a gap."""
        r_offset = self.state._read_offset[PARTITION]
        if r_offset is None or offset >= r_offset:
            if offset - (r_offset or 0) > 1 and r_offset:
                await self.implementation._add_gap(self.state, PARTITION, r_offset + 1, offset)
            self.state._read_offset[PARTITION] = offset

    def ack(self, offset: int) -> None:
        """``Consumer.ack``."""
        committed = self.state._committed_offset[PARTITION]
        if committed is None or offset >= committed:
            index = self.state._acked_index[PARTITION]
            if offset not in index:
                index.add(offset)
                self.state._acked[PARTITION].append(offset)

    def commit(self) -> int | None:
        """``_filter_committable_offsets`` then ``_commit_offsets``: the offset committed."""
        offset = self.implementation._new_offset(self.state, PARTITION)
        committed = self.state._committed_offset[PARTITION]
        if offset is not None and (committed is None or (bool(offset) and offset > committed)):
            self.state._committed_offset[PARTITION] = offset
            return int(offset)
        return None


def both(committed: int | None) -> tuple[Bookkeeping, Bookkeeping]:
    return (
        Bookkeeping(IntervalTree, committed, FaustConsumer, defaultdict(lambda: None)),
        Bookkeeping(OffsetGaps, committed, GapTrackingConsumer, ReadOffsets()),
    )


# A step: ("read", hole before the record), ("ack", which unacked record), ("commit", _).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(0, 3)),
        st.tuples(st.just("ack"), st.integers(0, 4)),
        st.tuples(st.just("commit"), st.just(0)),
    ),
    max_size=120,
)


async def run_both(start: int | None, script: list[tuple[str, int]]) -> None:
    faust_side, ours = both(start)
    next_offset = start or 0
    unacked: list[int] = []
    last_acked: int | None = None
    for kind, value in script:
        if kind == "read":
            next_offset += value
            await faust_side.read(next_offset)
            await ours.read(next_offset)
            unacked.append(next_offset)
            next_offset += 1
        elif kind == "ack" and unacked:
            last_acked = unacked.pop(0)
            faust_side.ack(last_acked)
            ours.ack(last_acked)
        elif kind == "commit":
            faust_side.commit()
            ours.commit()
            committed = ours.state._committed_offset[PARTITION]
            if last_acked is not None:
                assert committed == last_acked + 1
            faust_committed = faust_side.state._committed_offset[PARTITION]
            assert faust_committed is None or committed >= faust_committed


@hypothesis_settings(max_examples=500, deadline=None)
@given(start=st.one_of(st.none(), st.integers(0, 5)), script=steps)
async def test_with_acks_in_order_each_commit_reaches_past_the_last_acked_offset(
    start: int | None, script: list[tuple[str, int]]
) -> None:
    await run_both(start, script)


async def test_a_transactional_partition_commits_each_transaction_where_faust_falls_behind() -> (
    None
):
    """Transactions of 3: a control record after every 3 records; all acked, in order.

    Faust's gap on reading a transaction's first record also covers that record, which
    is then acked too: the duplicate ends each commit's run after one transaction.
    """
    faust_side, ours = both(0)
    offset = 0
    for _ in range(20):
        for _ in range(5 * 3):  # five transactions between two commits
            for side in (faust_side, ours):
                await side.read(offset)
                side.ack(offset)
            offset += 1
            if offset % 4 == 3:
                offset += 1  # the commit marker
        for side in (faust_side, ours):
            side.commit()
        assert ours.state._committed_offset[PARTITION] == offset - 1  # past the last record
    assert faust_side.state._committed_offset[PARTITION] < offset / 4  # a transaction a commit


async def test_a_hole_is_taken_only_once_the_record_after_it_is_acked() -> None:
    _, ours = both(10)
    for offset in (10, 11, 14):  # 12 and 13: control records
        await ours.read(offset)
    ours.ack(10)
    ours.ack(11)
    assert ours.commit() == 12
    ours.ack(14)
    assert ours.commit() == 15


async def test_a_hole_right_after_offset_0_is_recorded() -> None:
    """Faust skips it (``if r_offset``): with offsets 1 and 2 not records, it stalls."""
    faust_side, ours = both(None)
    for side in (faust_side, ours):
        for offset in (0, 3):
            await side.read(offset)
            side.ack(offset)
        side.commit()
        side.commit()
    assert ours.state._committed_offset[PARTITION] == 4
    assert faust_side.state._committed_offset[PARTITION] == 1


def test_overlapping_ranges_merge_and_touching_ones_stay_apart() -> None:
    gaps = OffsetGaps()
    gaps.add(5, 8)
    gaps.add(8, 10)
    gaps.add(1, 3)
    gaps.add(2, 6)
    assert list(gaps) == [(1, 8), (8, 10)]
    assert gaps.take_starting_below(8) == [(1, 8)]
    assert list(gaps) == [(8, 10)]


async def test_after_a_seek_an_unacked_record_at_the_committed_offset_is_never_passed() -> None:
    faust_side, ours = both(10)
    for side in (faust_side, ours):
        await side.read(10)
        await side.read(11)
        side.ack(11)  # 10 is still being processed (or was never handed out)

    assert faust_side.commit() == 12  # Faust steps over 10: it is lost
    assert ours.commit() is None
    ours.ack(10)
    assert ours.commit() == 12


async def test_after_a_seek_a_control_record_at_the_committed_offset_is_a_hole() -> None:
    _, ours = both(10)
    await ours.read(11)  # offset 10 is a transaction's control record: never read
    ours.ack(11)

    assert ours.commit() == 12


async def test_a_commit_during_a_revocation_never_passes_a_record_not_handed_out() -> None:
    """Offset 547 was read and never handed out (so never acked); 548-559 were in flight
    when the partition was revoked and finish during the revocation's wait, which then
    commits. Faust dropped the committed offset before that commit, which then took the
    run 548-559 and committed 560: 547 was lost (tests/faults/test_rebalance_under_load.py)."""
    ours = Bookkeeping(OffsetGaps, 540, GapTrackingConsumer, ReadOffsets())
    for offset in range(540, 560):
        await ours.read(offset)
    for offset in range(540, 547):
        ours.ack(offset)
    assert ours.commit() == 547
    committed_in_revocation: list[int | None] = []

    async def wait_for_the_records_in_flight_then_commit(revoked: set[TP]) -> None:
        for offset in range(548, 560):
            ours.ack(offset)
        committed_in_revocation.append(ours.commit())

    state = ours.state
    state._on_partitions_revoked = wait_for_the_records_in_flight_then_commit
    state._active_partitions = {PARTITION}
    state._paused_partitions = set()
    state._sought = {PARTITION: (1, 540)}
    state._behind_logged = {}
    state.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
    await GapTrackingConsumer.on_partitions_revoked(state, {PARTITION})
    assert committed_in_revocation == [None]
    assert PARTITION not in state._committed_offset  # dropped once the commit is done
    assert PARTITION not in state._sought
    assert PARTITION not in state._active_partitions


class FetchingConsumer(GapTrackingConsumer):
    """The consumer's fetch and seek bookkeeping alone: ``fetch`` plays the thread's fetch."""

    def __init__(self, fetch: Any) -> None:  # no Faust service: only what _getmany uses
        self._seeks = 0
        self._behind_logged = {}
        self._sought = {}
        self._all_sought = asyncio.Event()
        self._all_sought.set()
        self._read_offset = ReadOffsets()
        self.fetch = fetch
        self.applied: list[tuple[TP, int]] = []
        self.log = SimpleNamespace(dev=lambda *args: None)  # type: ignore[assignment]

    def assignment(self) -> set[TP]:
        return {PARTITION, OTHER_PARTITION}

    def _is_changelog_tp(self, tp: TP) -> bool:
        return False

    async def _seek(self, partition: TP, offset: int) -> None:
        self.applied.append((partition, offset))


OTHER_PARTITION = TP("t", 1)


async def test_records_of_a_partition_sought_during_a_fetch_are_dropped_and_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch runs on the consumer's thread; a seek applied while it runs leaves it
    returning records read before the seek (1083-1107 here, after a seek to 1073). Handed
    out, they moved the read offset past 1073 and Faust dropped 1073-1082 when they came
    again (tests/faults/test_rebalance_under_load.py: one reply in about 4,000 missing)."""

    async def fetch_across_a_seek(self: FetchingConsumer, active: Any, timeout: float) -> Any:
        await self.seek(PARTITION, 1073)  # a rebalance's seek, while the fetch waits
        return {PARTITION: list(range(1083, 1108)), OTHER_PARTITION: [7, 8]}

    monkeypatch.setattr(AIOKafkaConsumer, "_getmany", fetch_across_a_seek)
    consumer = FetchingConsumer(None)
    records = await consumer._getmany({PARTITION, OTHER_PARTITION}, 1.0)
    assert records == {OTHER_PARTITION: [7, 8]}
    assert consumer.applied == [(PARTITION, 1073), (PARTITION, 1073)]  # sought again
    assert consumer._read_offset[PARTITION] == 1072  # 1073 is the next record read

    async def plain_fetch(self: FetchingConsumer, active: Any, timeout: float) -> Any:
        return {PARTITION: [1073, 1074]}

    monkeypatch.setattr(AIOKafkaConsumer, "_getmany", plain_fetch)
    assert await consumer._getmany({PARTITION}, 1.0) == {PARTITION: [1073, 1074]}


async def test_a_fetch_that_starts_while_every_partition_is_sought_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The seek to the committed offsets runs on the consumer's thread: a fetch that
    starts meanwhile can still return records of the old position (918 after a seek to
    914: the trace of test_rebalance_under_load showed 914-917 dropped as already read)."""
    consumer = FetchingConsumer(None)
    consumer._committed_offset = {PARTITION: 914, OTHER_PARTITION: None}
    seek_applied = asyncio.Event()

    async def seek_on_the_thread(self: FetchingConsumer) -> None:
        await seek_applied.wait()

    async def fetch_of_the_old_position(self: FetchingConsumer, active: Any, t: float) -> Any:
        return {PARTITION: [918, 919]}

    monkeypatch.setattr(AIOKafkaConsumer, "perform_seek", seek_on_the_thread)
    monkeypatch.setattr(AIOKafkaConsumer, "_getmany", fetch_of_the_old_position)
    seeking = asyncio.ensure_future(consumer.perform_seek())
    await asyncio.sleep(0)  # the seek is under way
    fetching = asyncio.ensure_future(consumer._getmany({PARTITION}, 1.0))
    await asyncio.sleep(0)
    seek_applied.set()
    await seeking
    assert await fetching == {}
    assert consumer.applied == [(PARTITION, 914)]  # read again from the sought offset
    assert consumer._read_offset[PARTITION] == 913


async def test_a_record_behind_the_read_offset_is_handed_out_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust's fetch loop drops a record behind the read offset as already read: the
    read offset is moved back so that it is handed out (a duplicate at worst)."""
    consumer = FetchingConsumer(None)
    consumer._read_offset[PARTITION] = 947

    async def reread(self: FetchingConsumer, timeout: float) -> Any:
        yield PARTITION, SimpleNamespace(offset=914)

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", reread)
    handed = [message.offset async for _, message in consumer.getmany(1.0)]
    assert handed == [914]
    assert consumer._read_offset[PARTITION] == 913  # Faust's loop hands 914 out


async def test_records_faust_stops_handing_out_are_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust stops handing out a batch when the flow stops (a rebalance) while the
    consumer's position has moved past the batch; the seek meant to follow did not always
    put it back (test_rebalance_under_load lost 892-922 so), and the next record read
    left a hole over them that a commit passed."""
    consumer = FetchingConsumer(None)
    batch = [SimpleNamespace(offset=offset) for offset in range(890, 923)]

    async def stops_after_two(self: FetchingConsumer, timeout: float) -> Any:
        self._batch = {PARTITION: batch, OTHER_PARTITION: [SimpleNamespace(offset=7)]}
        yield OTHER_PARTITION, SimpleNamespace(offset=7)
        yield PARTITION, batch[0]
        yield PARTITION, batch[1]  # then the flow stops

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", stops_after_two)
    handed = [(tp, message.offset) async for tp, message in consumer.getmany(1.0)]
    assert handed == [(OTHER_PARTITION, 7), (PARTITION, 890), (PARTITION, 891)]
    assert consumer.applied == [(PARTITION, 891)]  # 891's hand-over may have been abandoned
    assert consumer._read_offset[PARTITION] == 890
