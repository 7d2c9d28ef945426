"""BackgroundShare: replies first."""

from __future__ import annotations

import asyncio
import time

from sa01.pipeline.priority import BackgroundShare


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_background_jobs_take_the_busy_share_while_a_reply_is_in_flight() -> None:
    share = BackgroundShare(idle_limit=4, busy_limit=1, hold_seconds=0.0)
    release = asyncio.Event()
    running: list[int] = []

    async def background(n: int) -> None:
        async with share.slot():
            running.append(n)
            await release.wait()

    with share.foreground():
        tasks = [asyncio.create_task(background(n)) for n in range(4)]
        await settle()
        assert running == [0], "one background job while a reply is in flight"
    await settle()
    assert sorted(running) == [0, 1, 2, 3], "the idle share once no reply is in flight"
    release.set()
    await asyncio.gather(*tasks)
    assert share.running == 0


async def test_a_lagging_loop_shrinks_the_busy_share_to_nothing_and_it_recovers() -> None:
    now = [0.0]
    share = BackgroundShare(idle_limit=64, busy_limit=8, clock=lambda: now[0])
    with share.foreground():
        assert share.limit == 8
        for _ in range(10):
            share.observe_lag(0.050)  # replies' steps wait 50 ms for the loop
        assert share.limit == 0, "background waits while the loop lags"
        for _ in range(40):
            share.observe_lag(0.0)
        assert share.limit == 8, "and gets its share back once the loop is on time"
    now[0] += 5.0  # no reply for longer than hold_seconds: the idle share
    assert share.limit == 64


async def test_the_sampler_measures_a_blocked_loop() -> None:
    share = BackgroundShare(idle_limit=4, busy_limit=4, sample_seconds=0.01)
    await share.start()
    try:
        await asyncio.sleep(0.02)
        time.sleep(0.1)  # blocking the loop is the point
        await asyncio.sleep(0.03)
        assert share.loop_lag_seconds > share.max_lag_seconds
    finally:
        await share.stop()


async def test_foreground_work_never_waits_for_the_share() -> None:
    share = BackgroundShare(idle_limit=1, busy_limit=1)
    async with share.slot():
        with share.foreground():
            assert share.foreground_in_flight == 1
    assert share.limit == 1
