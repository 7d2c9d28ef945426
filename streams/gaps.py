"""Offset-gap tracking at O(1) amortised per record: the one place Faust's is replaced.

Faust (``faust.transport.consumer.Consumer``) records every hole in a partition's
offsets (a transaction's control record, a compacted record) in an ``IntervalTree``
and calls ``merge_overlaps()`` after each insertion, which rebuilds the tree: with
the committed offset lagging (a backlog), every gap costs time proportional to the
gaps already held, so draining ``n`` transactional records costs ``O(n²)``. py-spy
put half of a draining worker's samples there (issue 13).

Gaps arrive in offset order (the fetcher reads each partition forwards), so a sorted
deque of ranges does the same job: appending a gap and taking the gaps below the
highest acked offset are ``O(1)`` per range, amortised. :class:`OffsetGaps` keeps
Faust's semantics exactly (ranges merge only when they overlap, not when they touch;
a range added out of order still merges correctly, just not in ``O(1)``), and
:class:`GapTrackingConsumer` overrides the only two methods that touch the gaps,
``_add_gap`` and ``_new_offset``, with bodies that give the same committed offsets as
Faust's for every sequence of reads, acks and commits (``tests/unit/test_gaps.py``
checks it against Faust's own methods). ``StreamsApp._new_consumer`` builds it.

Faust's quirks are kept on purpose, because the committed offsets must not change:
the gap added on reading offset ``o`` after ``r`` covers ``r + 1`` to ``o`` inclusive,
so a later offset acked before ``o`` would let the commit pass ``o``. This project
never acks out of order (``OrderedAcks``, or Faust's own in-order ``stream.events()``
acks), so that cannot happen here.
"""

from __future__ import annotations

import bisect
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from faust.utils.functional import consecutive_numbers

__all__ = ["GapTrackingConsumer", "OffsetGaps"]


class OffsetGaps:
    """Disjoint half-open offset ranges ``[begin, end)`` of one partition, sorted.

    Ranges that overlap are merged; ranges that only touch are kept apart (as
    ``IntervalTree.merge_overlaps(strict=True)`` does), since Faust's commit logic
    depends on where each range starts.
    """

    __slots__ = ("_ranges",)

    def __init__(self) -> None:
        self._ranges: deque[tuple[int, int]] = deque()

    def __len__(self) -> int:
        return len(self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._ranges)

    def add(self, begin: int, end: int) -> None:
        """Add ``[begin, end)``; ``O(1)`` when it starts at or after the last range's end."""
        if end <= begin:
            return
        ranges = self._ranges
        if not ranges or begin >= ranges[-1][1]:
            ranges.append((begin, end))
            return
        self._insert_out_of_order(begin, end)

    def _insert_out_of_order(self, begin: int, end: int) -> None:
        ranges = list(self._ranges)
        bisect.insort(ranges, (begin, end))
        merged: list[tuple[int, int]] = []
        for low, high in ranges:
            if merged and low < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        self._ranges = deque(merged)

    def take_starting_below(self, offset: int) -> list[tuple[int, int]]:
        """Remove and return every range that starts below ``offset``, in order."""
        taken: list[tuple[int, int]] = []
        ranges = self._ranges
        while ranges and ranges[0][0] < offset:
            taken.append(ranges.popleft())
        return taken

    def chop_below(self, offset: int) -> None:
        """Forget every offset below ``offset`` (ranges that straddle it are cut)."""
        ranges = self._ranges
        while ranges and ranges[0][0] < offset:
            _, high = ranges.popleft()
            if high > offset:
                ranges.appendleft((offset, high))
                return


class GapTrackingConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer with :class:`OffsetGaps` in place of its interval trees."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gap: Any = defaultdict(OffsetGaps)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Record that ``offset_from``..``offset_to`` (inclusive) need no ack (Faust's rule)."""
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed + 1)
        if offset_from <= offset_to:
            self._gap[tp].add(offset_from, offset_to + 1)

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``, or None: Faust's rule, gaps taken in ``O(1)``.

        The acked offsets and the gaps below the highest acked offset form runs; the
        first run's end is committed, unless it does not start where the last commit
        left off (more than one offset missing at the head).
        """
        acked: list[int] = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gaps: OffsetGaps = self._gap[tp]
        if gaps:
            taken = gaps.take_starting_below(max_offset)
            if taken:
                for low, high in taken:
                    acked.extend(range(low, high))
                gaps.chop_below(max(taken[-1][1] - 1, max_offset + 1))
        acked.sort()
        committed = self._committed_offset[tp]
        if committed and acked[0] - committed > 1:
            return None
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1
