"""MicroBatcher: items submitted together are flushed together, each gets its own result."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sa01.core.micro_batch import MicroBatcher


class Recorder:
    """A flush that records its batches; ``bad`` items fail alone, ``outage`` fails all."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(items)
        await self.gate.wait()
        if -1 in items:
            raise ConnectionError("outage")
        return [ValueError(f"bad {i}") if i == 13 else i * 10 for i in items]


async def settle() -> None:
    """Let every ready task run until it waits."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_items_submitted_together_share_one_flush_in_order() -> None:
    recorder = Recorder()
    sizes: list[int] = []
    batcher = MicroBatcher(recorder.flush, max_size=100, max_wait=0.0, on_batch=sizes.append)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert recorder.batches == [list(range(10))]
    assert sizes == [10]


async def test_items_arriving_during_a_flush_form_the_next_batch() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher = MicroBatcher(recorder.flush, max_size=100, max_wait=0.0)
    first = asyncio.ensure_future(batcher.submit(0))
    await settle()
    assert recorder.batches == [[0]]
    later = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
    await settle()
    recorder.gate.set()
    assert await first == 0
    assert [await f for f in later] == [10, 20, 30]
    assert recorder.batches == [[0], [1, 2, 3]]


async def test_a_batch_holds_at_most_max_size_items() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder.flush, max_size=4, max_wait=10.0)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert [len(b) for b in recorder.batches] == [4, 4, 2]


async def test_an_item_failing_alone_fails_only_its_caller() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder.flush, max_size=100, max_wait=0.0)
    results = await asyncio.gather(
        *(batcher.submit(i) for i in (12, 13, 14)), return_exceptions=True
    )
    assert results[0] == 120 and results[2] == 140
    assert isinstance(results[1], ValueError)


async def test_a_flush_that_raises_fails_its_whole_batch_and_the_next_batch_runs() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder.flush, max_size=100, max_wait=0.0)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, -1)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await batcher.submit(5) == 50


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher = MicroBatcher(recorder.flush, max_size=100, max_wait=0.0)
    futures = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await settle()
    futures[1].cancel()
    recorder.gate.set()
    assert await futures[0] == 0 and await futures[2] == 20
    with pytest.raises(asyncio.CancelledError):
        await futures[1]
    await batcher.close()
