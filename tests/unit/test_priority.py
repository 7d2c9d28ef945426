"""BackgroundShare (replies first) and a LanedConsumer's pause at its high-water mark."""

from __future__ import annotations

import asyncio

from core.metrics import Metrics
from core.settings import Settings
from outbox.database import Database
from pipeline.consuming import LanedConsumer, RecordGuard
from pipeline.dead_letters import DeadLetterWriter, InboundMessage
from pipeline.priority import BackgroundShare


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


async def test_replies_slower_than_their_baseline_shrink_the_busy_share_to_nothing() -> None:
    now = [0.0]
    share = BackgroundShare(idle_limit=64, busy_limit=8, clock=lambda: now[0])

    def replies(count: int, seconds: float) -> None:
        for _ in range(count):
            with share.foreground():
                now[0] += seconds

    replies(20, 0.010)
    assert share.limit == 8
    replies(6, 0.100)  # ten times the baseline: the replies are being starved
    assert share.limit == 0, "background waits while replies are slow"
    replies(40, 0.010)
    assert share.limit == 8, "and gets its share back once they are on time"
    now[0] += 5.0  # no reply for longer than hold_seconds: the idle share
    assert share.limit == 64


async def test_foreground_work_never_waits_for_the_share() -> None:
    share = BackgroundShare(idle_limit=1, busy_limit=1)
    async with share.slot():
        with share.foreground():
            assert share.foreground_in_flight == 1
    assert share.limit == 1


async def test_a_background_consumer_pauses_at_its_high_water_mark_and_resumes_at_half() -> None:
    settings = Settings()
    metrics = Metrics()
    guard = RecordGuard(
        "memory", settings, DeadLetterWriter(settings, Database(settings), metrics), metrics
    )
    release = asyncio.Event()
    events: list[str] = []

    async def handle(message: InboundMessage) -> str:
        await release.wait()
        return "stored"

    ready = asyncio.Event()
    ready.set()
    consumer = LanedConsumer(guard, handle, 1_000, ready)
    consumer.pause_above(4, lambda: events.append("pause"), lambda: events.append("resume"))
    acked: list[int] = []
    for offset in range(6):
        message = InboundMessage("t", 0, offset, f"k{offset}".encode(), b"{}")
        await consumer.submit(message, 0, lambda o=offset: acked.append(o))
    assert events == ["pause"], "paused once at 4 in flight, the stream never blocked"
    release.set()
    await consumer.wait_idle()
    assert events == ["pause", "resume"]
    assert acked == list(range(6))
