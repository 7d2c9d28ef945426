"""Gap tracking: OffsetGaps gives the committed offsets Faust's interval tree gives.

Faust's own ``_add_gap`` and ``_new_offset`` run on one copy of the consumer's
bookkeeping and ours on another, for the same reads, acks and commits (the reads
replay what ``Consumer._drain_messages`` does; the acks what ``Consumer.ack`` does);
every commit must name the same offset.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from intervaltree import IntervalTree  # type: ignore[import-untyped]

from streams.gaps import GapTrackingConsumer, OffsetGaps

PARTITION = TP("t", 0)


class Bookkeeping:
    """The consumer state the gap methods read and write, driven like Faust drives it."""

    def __init__(self, gaps: Any, committed: int | None, implementation: Any) -> None:
        self.state = SimpleNamespace(
            _acked=defaultdict(list),
            _acked_index=defaultdict(set),
            _gap=defaultdict(gaps),
            _committed_offset=defaultdict(lambda: None),
        )
        self.implementation = implementation
        self.read_offset: int | None = committed
        if committed is not None:
            self.state._committed_offset[PARTITION] = committed

    async def read(self, offset: int) -> None:
        """``_drain_messages``: a record arrives; the hole before it becomes a gap."""
        r_offset = self.read_offset
        if r_offset is None or offset >= r_offset:
            if offset - (r_offset or 0) > 1 and r_offset:
                await self.implementation._add_gap(self.state, PARTITION, r_offset + 1, offset)
            self.read_offset = offset

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
        Bookkeeping(IntervalTree, committed, FaustConsumer),
        Bookkeeping(OffsetGaps, committed, GapTrackingConsumer),
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


async def run_both(start: int | None, script: list[tuple[str, int]], in_order: bool) -> None:
    faust_side, ours = both(start)
    next_offset = start or 0
    unacked: list[int] = []
    for kind, value in script:
        if kind == "read":
            next_offset += value
            await faust_side.read(next_offset)
            await ours.read(next_offset)
            unacked.append(next_offset)
            next_offset += 1
        elif kind == "ack" and unacked:
            offset = unacked.pop(0 if in_order else value % len(unacked))
            faust_side.ack(offset)
            ours.ack(offset)
        elif kind == "commit":
            assert faust_side.commit() == ours.commit()
            assert sorted(faust_side.state._acked[PARTITION]) == sorted(
                ours.state._acked[PARTITION]
            )
    assert faust_side.commit() == ours.commit()


@hypothesis_settings(max_examples=400, deadline=None)
@given(start=st.one_of(st.none(), st.integers(0, 5)), script=steps)
async def test_same_commits_as_faust_with_acks_in_order(
    start: int | None, script: list[tuple[str, int]]
) -> None:
    await run_both(start, script, in_order=True)


@hypothesis_settings(max_examples=400, deadline=None)
@given(start=st.one_of(st.none(), st.integers(0, 5)), script=steps)
async def test_same_commits_as_faust_with_acks_in_any_order(
    start: int | None, script: list[tuple[str, int]]
) -> None:
    await run_both(start, script, in_order=False)


async def test_a_transactional_partition_commits_to_its_end() -> None:
    """Transactions of 10: a control record after every 10 records; all acked, in order.

    The gap Faust adds on reading a transaction's first record also covers that
    record, which is then acked too: the duplicate ends the commit's run early.
    """
    faust_side, ours = both(0)
    offset = 0
    for _ in range(200):
        for _ in range(10):
            for side in (faust_side, ours):
                await side.read(offset)
                side.ack(offset)
            offset += 1
        offset += 1  # the commit marker
        assert faust_side.commit() == ours.commit()
    # A duplicate (the quirk above) ends the first run one commit early; the next goes on.
    assert faust_side.commit() == ours.commit()
    assert ours.state._committed_offset[PARTITION] == offset - 1  # past the last record


def test_overlapping_ranges_merge_and_touching_ones_stay_apart() -> None:
    gaps = OffsetGaps()
    gaps.add(5, 8)
    gaps.add(8, 10)
    gaps.add(1, 3)
    gaps.add(2, 6)
    assert list(gaps) == [(1, 8), (8, 10)]
    assert gaps.take_starting_below(8) == [(1, 8)]
    gaps.chop_below(9)
    assert list(gaps) == [(9, 10)]
