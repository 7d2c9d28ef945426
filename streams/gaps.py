"""Offset-gap tracking at O(1) amortised per record: the one place Faust's is replaced.

Faust (``faust.transport.consumer.Consumer``) records every hole in a partition's
offsets (a transaction's control record, a compacted record) in an ``IntervalTree``
and calls ``merge_overlaps()`` after each insertion, which rebuilds the tree: with
the committed offset lagging (a backlog), every gap costs time proportional to the
gaps already held, so draining ``n`` transactional records costs ``O(n²)``. py-spy
put half of a draining worker's samples there (issue 13).

Worse, its gap for a hole before the record at offset ``o`` also covers ``o``
itself: once ``o`` is acked it is counted twice, and the run of consecutive offsets
that a commit takes stops at the duplicate. Each commit then advances past one
transaction only (one per ``broker_commit_interval``), so on a transactional topic
the committed offset falls ever further behind the work done, and a restart redoes
all of it. The tests on a real partition showed it: 3,000 memories stored, the
group committed at about 250 of 1,000 offsets per partition, and still there.

Here, :class:`GapTrackingConsumer` overrides the only two methods that touch the
gaps, ``_add_gap`` and ``_new_offset``:

* a gap is the hole only (``offset_from`` up to, not including, the record just
  read), kept in :class:`OffsetGaps`, a sorted deque of ranges: gaps arrive in offset
  order, so adding one and taking those below the highest acked offset cost ``O(1)``
  per range, amortised;
* a commit takes the whole run of acked offsets and holes from its head, each offset
  once, so with acks in order every commit reaches one past the last acked offset.

* Faust's reader tests ``if r_offset`` before recording a hole, so a hole right
  after offset 0 was never recorded and a partition whose offsets 1 and 2 are not
  records stalled for ever; the read offsets are kept as :class:`ReadOffset` values,
  which are true even at 0.

Six of Faust's rules lost records (issue 13's review; tests/faults/test_rebalance_under_load.py
found it: one reply in about 7,000 missing after a few rebalances under load):

* after a seek, Faust's read offset is the committed offset itself, so a control record
  there was never recorded as a hole, and Faust let the first acked offset lie one past
  the committed offset to step over it. A record read there and not acked was then
  committed past. Here a seek sets the read position (``ReadOffsets.at_position``): a
  record arriving past it records the hole from the committed offset, and a commit
  never passes an offset that is neither acked nor a hole;
* Faust abandons handing a record to the agents when the flow is suspended (a
  rebalance) while the record waits, and counts it as read all the same; the records
  after it were then handed out, acked and committed past it. Here an abandoned
  record fetches its partition again from it (``GapTrackingConsumer._deliver``).
* an ack that arrives after a rebalance for a record fetched before it went into the
  new generation's bookkeeping, before the seek set the committed offset (a commit
  then took any run); here it is ignored (``GapTrackingConsumer.ack``): the seek reads
  the record again;
* at a revocation Faust dropped the revoked partitions' committed offsets before the
  wait for the records in flight and its commit: that commit took any run of acks, and
  passed a record read but never handed out (one reply in about 4,000 missing in the
  same test, and in CI). Here the bookkeeping is dropped after that commit
  (``GapTrackingConsumer.on_partitions_revoked``), so it stops at the record not acked;
* the fetch runs on the consumer's thread while seeks apply at once: a fetch under way
  when its partition was sought (a rebalance's seek to the committed offset) returned
  records read before the seek. Handed out, they moved the read offset past the sought
  position; the records read again from there were dropped by Faust as already read,
  and the hole up to the first stale record was taken as a gap. Here such records are
  dropped and the partition sought again (``GapTrackingConsumer._getmany``). A record
  that still arrives behind the read offset is handed out all the same (a duplicate is
  answered from its idempotency record), with a warning;
* Faust stops handing out a batch when the flow stops or the generation changes, and
  skips the records of a partition paused meanwhile, though the consumer's position has
  moved past them: it counts on a seek to the committed offset to follow, and one did
  not put the position back (the trace showed 31 records so skipped, then a hole
  recorded over them). The records of a batch not handed out are sought again
  (``GapTrackingConsumer._read_again_what_was_not_handed_out``).

``StreamsApp._new_consumer`` builds the consumer; ``tests/unit/streams/test_gaps.py``
checks it against Faust's own methods.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator, Set

from faust.transport.consumer import CONSUMER_PARTITIONS_REVOKED, RecordMap
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message
from faust.utils.functional import consecutive_numbers
from mode import Service

__all__ = ["GapTrackingConsumer", "OffsetGaps", "ReadOffset", "ReadOffsets"]

logger = logging.getLogger(__name__)


class ReadOffset(int):
    """An offset that is true even when it is 0 (see the module's docstring)."""

    def __bool__(self) -> bool:
        return True


class ReadOffsets(defaultdict[TP, int | None]):
    """Faust's ``_read_offset`` map (None when unknown) handing out :class:`ReadOffset`."""

    def __init__(self) -> None:
        super().__init__(lambda: None)

    def __getitem__(self, tp: TP) -> ReadOffset | None:
        value = super().__getitem__(tp)
        return None if value is None else ReadOffset(value)

    def at_position(self, tp: TP, position: int) -> None:
        """``tp`` will be read from ``position`` next (a seek): nothing before it is
        unread, and a record that arrives past it leaves a hole from ``position``."""
        self[tp] = position - 1


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


class GapTrackingConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer with :class:`OffsetGaps` in place of its interval trees."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._gap: defaultdict[TP, OffsetGaps] = defaultdict(OffsetGaps)
        self._read_offset: ReadOffsets = ReadOffsets()
        self._hand_out = self.callback
        self.callback = self._deliver
        self._rewinding: set[asyncio.Future[None]] = set()
        self._held_at: dict[TP, int] = {}
        """Where each partition's commit was last said to be held (said once per offset)."""
        self._seeks = 0
        """Seeks so far: a fetch during which it changed may hold records read before one."""
        self._sought: dict[TP, tuple[int, int]] = {}
        """Each partition's last seek: the seek count after it, and the offset sought."""
        self._behind_logged: dict[TP, int] = {}
        """The seek count when a record behind the read offset was last logged."""
        self._batch: RecordMap = {}
        """The records of the last fetch Faust hands out."""
        self._all_sought = asyncio.Event()
        """Clear while every partition is sought to its committed offset."""
        self._all_sought.set()
        self.rewinds = 0
        """Records read but not handed out, fetched again (for tests and the log)."""

    async def _deliver(self, message: Message) -> None:
        """Hand ``message`` to the agents; if Faust abandons the hand-over (it does when
        the flow is suspended, for a rebalance, while the record waits), fetch the
        partition again from it: Faust counts it as read all the same, and the records
        after it would otherwise be committed past it."""
        try:
            await self._hand_out(message)
        except asyncio.CancelledError:
            self.rewinds += 1
            logger.info(
                "record %s[%d]@%d was not handed out: fetching its partition again from it",
                message.topic,
                message.partition,
                message.offset,
            )
            task = asyncio.ensure_future(self._rewind(message.tp, message.offset))
            self._rewinding.add(task)
            task.add_done_callback(self._rewinding.discard)
            raise

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's batches; a record behind its partition's read offset (which Faust's
        fetch loop would drop unseen) is handed out, with a warning; records of the batch
        not handed out are read again."""
        self._batch = {}
        handed: dict[TP, int] = {}
        async for tp, message in super().getmany(timeout):
            read = self._read_offset[tp]
            if read is not None and message.offset < read:
                # Faust's fetch loop would drop it as already read. Whatever moved the
                # read offset past it, handing it out again is safe (a duplicate is
                # answered from its idempotency record); dropping it is not.
                if self._behind_logged.get(tp) != self._seeks:
                    self._behind_logged[tp] = self._seeks
                    logger.warning(
                        "record %s[%d]@%d arrived behind the read offset %d: handed out",
                        tp.topic,
                        tp.partition,
                        message.offset,
                        read,
                    )
                self._read_offset.at_position(tp, message.offset)
            handed[tp] = message.offset
            yield tp, message
        await self._read_again_what_was_not_handed_out(self._batch, handed)

    async def _read_again_what_was_not_handed_out(
        self, batch: RecordMap, handed: dict[TP, int]
    ) -> None:
        """Seek each partition of ``batch`` with records Faust did not hand out back to
        the last record it handed out (or its first record).

        Faust stops handing out a batch when the flow stops or the generation changes,
        and skips the records of a partition paused meanwhile, though the consumer's
        position has moved past them. A seek to the committed offset was meant to
        follow; when it did not put the position back, the next record read past them
        left a hole over them, and a commit passed them.
        """
        for tp, records in batch.items():
            if not records:
                continue
            last = handed.get(tp)
            if last is not None and records[-1].offset <= last:
                continue  # all handed out: the common case
            # From the last record handed out, read again: its hand-over may have been
            # abandoned too (``_deliver`` then fetches from it as well), a duplicate at worst.
            first = records[0].offset if last is None else last
            if tp not in self.assignment() or self._is_changelog_tp(tp):
                # Revoked: its next owner reads from the committed offset. A table's
                # changelog: its recovery seeks it to the offsets it needs itself.
                continue
            logger.info(
                "records of %s[%d] after %d were not handed out: read again from it",
                tp.topic,
                tp.partition,
                first,
            )
            await self.seek(tp, first)

    async def _rewind(self, tp: TP, offset: int) -> None:
        if tp not in self.assignment():
            return  # revoked: its next owner reads from the committed offset
        try:
            await self.seek(tp, offset)
        except Exception:  # the next rebalance seeks to the committed offset anyway
            logger.exception("could not fetch %s again from %d", tp, offset)

    @Service.transitions_to(CONSUMER_PARTITIONS_REVOKED)
    async def on_partitions_revoked(self, revoked: Set[TP]) -> None:
        """Faust's revocation, with the revoked partitions' bookkeeping kept until the
        app's handler has waited for the records in flight and committed their acks.

        Faust drops the committed offset, acks, holes and read offsets of the revoked
        partitions first: the commit that follows the wait then took the first run of acks
        with no committed offset to start from, so it passed a record read and never
        handed out (and so never acked) when its successors finished during the wait.
        """
        if self._active_partitions is not None:
            self._active_partitions.difference_update(revoked)
        self._paused_partitions.difference_update(revoked)
        try:
            await self._on_partitions_revoked(set(revoked))
        finally:
            for tp in revoked:
                self._gap.pop(tp, None)
                self._acked.pop(tp, None)
                self._acked_index.pop(tp, None)
                self._read_offset.pop(tp, None)
                self._committed_offset.pop(tp, None)
                self._sought.pop(tp, None)
                self._held_at.pop(tp, None)
                self._behind_logged.pop(tp, None)

    def ack(self, message: Message) -> bool:
        """Record ``message`` as done for the next commit, unless it was fetched before
        the last rebalance: its partition was sought back to the committed offset since
        (and may have left this worker), so the record is read again and acked then;
        an old ack committed meanwhile could pass records not processed yet."""
        generation = message.generation_id
        if generation is not None and generation != self.app.consumer_generation_id:
            message.acked = True
            self._unacked_messages.discard(message)
            return False
        return bool(super().ack(message))

    async def seek(self, partition: TP, offset: int) -> None:
        """Seek; the next record read is ``offset`` (a hole after it is recorded)."""
        self._seeks += 1  # before the seek: a fetch that returns meanwhile is stale
        self._sought[partition] = (self._seeks, offset)
        await super().seek(partition, offset)
        self._read_offset.at_position(partition, offset)

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset, its read position.

        The seek is applied on the consumer's thread while this one goes on: the seek
        count moves before it (a fetch under way returns records read before it) and
        again after it (so may a fetch that started meanwhile)."""
        self._seeks += 1
        self._all_sought.clear()
        try:
            await super().perform_seek()
            self._seeks += 1
            seeks = self._seeks
            for tp in self.assignment():
                offset = self._committed_offset[tp]
                if offset is not None:
                    self._read_offset.at_position(tp, offset)
                    if offset > 0:  # aiokafka seeks only to a committed offset over 0
                        self._sought[tp] = (seeks, offset)
        finally:
            self._all_sought.set()

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> RecordMap:
        """One fetch; the records of a partition sought while it ran are dropped, and
        the partition is sought again to where that seek put it.

        The fetch runs on the consumer's thread and seeks are applied at once from
        this one: a fetch under way when its partition is sought can return records
        read before the seek. Handed out, they moved the read offset past the sought
        position, so the records read again after the seek were dropped by Faust's
        fetch loop as already read, and their holes became gaps that a commit passed.
        """
        seeks = self._seeks
        records = await super()._getmany(active_partitions, timeout)
        self._batch = records
        if not records or (self._seeks == seeks and self._all_sought.is_set()):
            return records
        await self._all_sought.wait()  # a seek of every partition under way: its offsets
        crossed = {tp: self._sought[tp][1] for tp in records if self._sought_since(tp, seeks)}
        if not crossed:
            return records
        logger.info(
            "a fetch crossed a seek of %s: its records there are read again",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(crossed)),
        )
        for tp, position in crossed.items():
            # What the fetch read after the seek moved the position past it: back again.
            if tp in self.assignment():
                await self.seek(tp, position)
        self._batch = {tp: batch for tp, batch in records.items() if tp not in crossed}
        return self._batch

    def _sought_since(self, tp: TP, seeks: int) -> bool:
        """Whether ``tp`` was sought since the seek count was ``seeks``."""
        sought = self._sought.get(tp)
        return sought is not None and sought[0] > seeks

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Record the hole ``offset_from`` .. ``offset_to - 1`` (``offset_to`` was just read)."""
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed)
        self._gap[tp].add(offset_from, offset_to)

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``, or None.

        The acked offsets and the holes below the highest acked offset, each once, form
        runs; the first run's end is committed, unless the run starts more than one
        offset past the last commit.
        """
        acked: list[int] = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gaps: OffsetGaps = self._gap[tp]
        if gaps:
            for low, high in gaps.take_starting_below(max_offset):
                acked.extend(range(low, high))
        acked[:] = sorted(set(acked))
        committed = self._committed_offset[tp]
        if committed is not None and acked[0] > committed:
            # The committed offset itself is neither acked nor a hole: a record there was
            # read and never handed out, or is still in flight. Said once per position.
            if self._held_at.get(tp) != committed:
                self._held_at[tp] = committed
                logger.info(
                    "commit of %s[%d] held at %d: first acked offset %d",
                    tp.topic,
                    tp.partition,
                    committed,
                    acked[0],
                )
            return None
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1
