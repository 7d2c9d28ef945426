"""Coalesced confirmations: a reading started before an ack never vouches for it, and
acks streaming in share a bounded number of ``/health`` reads."""

from __future__ import annotations

import asyncio
import time

import pytest

from sa01.core.settings import Settings
from sa01.providers.somabrain_health import MemoryHealthReading, SomaBrainHealth
from schemas.messages import ServiceState

pytestmark = pytest.mark.timeout(30)


class GatedHealth(SomaBrainHealth):
    """``/health`` played in process: each read starts, then waits for :meth:`answer`.

    The reading says what ``backend_up`` holds when the read *starts* (as a server
    answers about its state when asked).
    """

    def __init__(self) -> None:
        super().__init__(Settings(somabrain_url="http://127.0.0.1:9"))
        self.backend_up = True
        self.started: list[float] = []
        self._gates: list[asyncio.Event] = []

    async def read(self) -> MemoryHealthReading:
        started = time.monotonic()
        self.reads += 1
        up = self.backend_up
        self.started.append(started)
        gate = asyncio.Event()
        self._gates.append(gate)
        await gate.wait()
        state = ServiceState.HEALTHY if up else ServiceState.UNAVAILABLE
        reading = MemoryHealthReading(started, state, "up" if up else "down", backend_up=up)
        return self._keep(reading)

    async def answer(self) -> None:
        """Let the oldest unanswered read answer (waits until one has started)."""
        while not self._gates:
            await asyncio.sleep(0)
        self._gates.pop(0).set()
        for _ in range(5):
            await asyncio.sleep(0)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_reading_started_before_the_ack_never_vouches_for_it() -> None:
    health = GatedHealth()
    early = asyncio.create_task(health.confirm(time.monotonic()))
    await settle()
    assert health.reads == 1
    # The backend goes down, then a remember is acknowledged (as SomaBrain does while
    # its backend is down): the read in flight started before that ack.
    health.backend_up = False
    acked_at = time.monotonic()
    late = asyncio.create_task(health.confirm(acked_at))
    await settle()
    await health.answer()
    assert (await early).backend_up, "the first ack's own reading"
    assert not late.done(), "the read in flight started before the ack: it may not vouch"
    await health.answer()
    reading = await late
    assert reading.started >= acked_at
    assert not reading.backend_up, "the reading taken after the ack says the backend is down"
    assert health.reads == 2
    await health.close()


async def test_the_latest_reading_serves_only_acks_before_it() -> None:
    health = GatedHealth()
    first = asyncio.create_task(health.confirm(time.monotonic()))
    await health.answer()
    await first
    assert health.latest is not None
    before = health.latest.started
    assert (await health.confirm(before)).started == before, "no new read for an older ack"
    assert health.reads == 1
    later = asyncio.create_task(health.confirm(time.monotonic()))
    await health.answer()
    assert (await later).started > before
    assert health.reads == 2
    await health.close()


async def test_concurrent_acks_share_a_bounded_number_of_reads() -> None:
    health = GatedHealth()
    waiting: list[asyncio.Task[MemoryHealthReading]] = []
    acks: list[float] = []
    for _ in range(3):  # three rounds: each read in flight while 200 acks arrive
        for _ in range(200):
            acks.append(time.monotonic())
            waiting.append(asyncio.create_task(health.confirm(acks[-1])))
            await asyncio.sleep(0)
        await health.answer()
    while not all(task.done() for task in waiting):
        await health.answer()
    readings = [await task for task in waiting]
    assert health.reads <= 4, f"{health.reads} reads for {len(acks)} acks"
    for acked_at, reading in zip(acks, readings, strict=True):
        assert reading.started >= acked_at
    await health.close()


async def test_a_cancelled_confirmation_cancels_no_read() -> None:
    health = GatedHealth()
    first = asyncio.create_task(health.confirm(time.monotonic()))
    second = asyncio.create_task(health.confirm(time.monotonic()))
    await settle()
    first.cancel()
    await health.answer()
    assert (await second).backend_up
    assert health.reads == 1
    await health.close()


async def test_a_down_reading_answered_after_the_ack_vetoes_a_later_up_one() -> None:
    health = GatedHealth()
    health.backend_up = False
    early = asyncio.create_task(health.confirm(time.monotonic()))
    await settle()
    acked_at = time.monotonic()  # the read in flight (down) started before this ack
    late = asyncio.create_task(health.confirm(acked_at))
    await settle()
    health.backend_up = True  # the backend comes back before the queued read starts
    await health.answer()
    assert not (await early).backend_up
    await health.answer()
    reading = await late
    assert not reading.backend_up, "down after the ack: the memory may be lost, keep it"
    await health.close()


async def test_an_ack_while_the_backend_read_down_is_not_vouched_by_the_recovery() -> None:
    """The recovery race: the last reading before the ack said down, the backend comes
    back, and the next reading (after the ack) says up. The memory may have been lost
    while the backend was down, so the up reading may not vouch for it."""
    health = GatedHealth()
    health.backend_up = False
    before = asyncio.create_task(health.confirm(time.monotonic()))
    await settle()
    await health.answer()
    assert not (await before).backend_up
    acked_at = time.monotonic()  # acknowledged while the backend was down
    health.backend_up = True  # ...and it comes back before the next reading starts
    after = asyncio.create_task(health.confirm(acked_at))
    await settle()
    await health.answer()
    reading = await after
    assert not reading.backend_up, "the last reading before the ack said down"
    later = asyncio.create_task(health.confirm(time.monotonic()))
    await settle()
    await health.answer()
    assert (await later).backend_up, "an ack after the recovery is vouched for again"
    await health.close()
