"""Unit tests of resilience/circuit_breaker.py: every transition, both windows,
metrics, listeners, config validation, and a stateful test against a reference model.

Breaker timing uses a fake clock; nothing sleeps on the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from prometheus_client import CollectorRegistry

from sa01.core.errors import CircuitOpenError, ServiceUnavailableError
from sa01.core.metrics import Metrics
from sa01.resilience.circuit_breaker import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    Permit,
)
from tests.support.clock import FakeClock

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
DISABLED = BreakerState.DISABLED


class Boom(Exception):
    """A failure of the dependency."""


BASE: dict[str, Any] = {
    "window_type": "count",
    "window_size": 10,
    "minimum_calls": 4,
    "failure_rate_threshold": 50.0,
    "slow_call_rate_threshold": 50.0,
    "slow_call_duration": 1.0,
    "consecutive_failures_threshold": None,
    "permitted_calls_in_half_open": 2,
    "wait_in_open": 10.0,
    "wait_backoff_multiplier": 2.0,
    "max_wait_in_open": 35.0,
    "wait_jitter": 0.0,
}


def config(**overrides: Any) -> BreakerConfig:
    return BreakerConfig(**{**BASE, **overrides})


@dataclass
class Rig:
    breaker: CircuitBreaker
    clock: FakeClock
    events: list[BreakerTransition] = field(default_factory=list)
    metrics: Metrics | None = None

    async def ok(self, duration: float = 0.0) -> None:
        async with self.breaker.call():
            self.clock.advance(duration)

    async def fail(self, exc: BaseException | None = None, duration: float = 0.0) -> None:
        error = exc if exc is not None else Boom("down")
        with pytest.raises(type(error)) as caught:
            async with self.breaker.call():
                self.clock.advance(duration)
                raise error
        assert caught.value is error  # re-raised untouched

    def sample(self, metric: str, **labels: str) -> float | None:
        assert self.metrics is not None
        return self.metrics.registry.get_sample_value(metric, {"name": self.breaker.name, **labels})

    def transitions(self) -> list[tuple[BreakerState, BreakerState]]:
        return [(e.from_state, e.to_state) for e in self.events]


def rig(with_metrics: bool = False, random_fn: Any = None, **overrides: Any) -> Rig:
    clock = FakeClock()
    events: list[BreakerTransition] = []
    metrics = Metrics(CollectorRegistry()) if with_metrics else None
    breaker = CircuitBreaker(
        "svc",
        config(**overrides),
        clock=clock,
        random=random_fn if random_fn is not None else random.Random(0).random,
        metrics=metrics,
        listeners=[events.append],
    )
    return Rig(breaker, clock, events, metrics)


async def open_rig(**overrides: Any) -> Rig:
    """A rig whose breaker was just opened by failures (opened_at = clock start)."""
    r = rig(**overrides)
    for _ in range(r.breaker.config.minimum_calls):
        await r.fail()
    assert r.breaker.state is OPEN
    return r


async def hold(breaker: CircuitBreaker, release: asyncio.Event, ran: list[int]) -> None:
    async with breaker.call():
        ran.append(1)
        await release.wait()


# --- closed -> open -----------------------------------------------------------------


async def test_failure_rate_at_threshold_opens() -> None:
    r = rig()
    await r.ok()
    await r.ok()
    await r.fail()
    assert r.breaker.state is CLOSED  # 3 calls < minimum_calls
    await r.fail()  # 2 of 4 = 50%
    assert r.breaker.state is OPEN
    snap = r.breaker.snapshot()
    assert (snap.calls_in_window, snap.failed_calls, snap.failure_rate) == (4, 2, 50.0)
    assert r.events[-1].reason.startswith("failure rate 50.0%")


async def test_failure_rate_below_threshold_stays_closed() -> None:
    r = rig()
    for _ in range(3):
        await r.ok()
    await r.fail()  # 25%
    for _ in range(4):
        await r.ok()
    assert r.breaker.state is CLOSED
    assert r.breaker.snapshot().failure_rate == pytest.approx(100 / 8)


async def test_below_minimum_calls_stays_closed() -> None:
    r = rig(minimum_calls=4)
    for _ in range(3):
        await r.fail()
    assert r.breaker.state is CLOSED
    assert r.breaker.snapshot().failure_rate == 100.0
    await r.fail()
    assert r.breaker.state is OPEN


async def test_slow_call_rate_opens_even_when_calls_succeed() -> None:
    r = rig(with_metrics=True)
    await r.ok()
    await r.ok(duration=1.5)
    await r.ok()
    assert r.breaker.state is CLOSED
    await r.ok(duration=1.0)  # slow_call_duration itself counts as slow: 2 of 4
    assert r.breaker.state is OPEN
    assert "slow-call rate 50.0%" in r.events[-1].reason
    assert r.sample("circuit_breaker_calls_total", outcome="slow_success") == 2
    assert r.sample("circuit_breaker_calls_total", outcome="success") == 2


async def test_slow_failures_count_for_both_rates() -> None:
    r = rig(with_metrics=True, failure_rate_threshold=100.0, slow_call_rate_threshold=75.0)
    for _ in range(3):
        await r.fail(duration=2.0)
    await r.ok()
    assert r.breaker.state is OPEN  # slow 3 of 4 = 75%, failures 75% < 100%
    assert r.sample("circuit_breaker_calls_total", outcome="slow_failure") == 3


async def test_consecutive_failures_open_below_minimum_calls() -> None:
    r = rig(window_size=100, minimum_calls=100, consecutive_failures_threshold=3)
    await r.fail()
    await r.fail()
    await r.ok()  # a success resets the run
    await r.fail()
    await r.fail()
    assert r.breaker.state is CLOSED
    assert r.breaker.snapshot().consecutive_failures == 2
    await r.fail()
    assert r.breaker.state is OPEN
    assert r.events[-1].reason == "3 consecutive failures"


# --- open ---------------------------------------------------------------------------------


async def test_open_rejects_without_running_the_body_and_counts_rejected() -> None:
    r = await open_rig(with_metrics=True)
    ran: list[int] = []
    with pytest.raises(CircuitOpenError) as caught:
        async with r.breaker.call():
            ran.append(1)
    assert caught.value.name == "svc"

    async def body() -> int:
        ran.append(2)
        return 1

    with pytest.raises(CircuitOpenError):
        await r.breaker.run(body)
    assert ran == []
    assert not r.breaker.try_acquire()
    assert r.sample("circuit_breaker_calls_total", outcome="rejected") == 3
    assert r.sample("circuit_breaker_calls_total", outcome="failure") == 4


async def test_open_to_half_open_after_the_wait() -> None:
    r = await open_rig()
    snap = r.breaker.snapshot()
    assert snap.opened_at == 1000.0
    assert snap.next_attempt_at == 1010.0
    r.clock.advance(9.999)
    assert not r.breaker.is_call_permitted
    assert r.breaker.state is OPEN
    r.clock.advance(0.001)
    assert r.breaker.is_call_permitted
    assert r.transitions()[-1] == (CLOSED, OPEN)  # is_call_permitted has no side effect
    assert r.breaker.state is HALF_OPEN
    assert r.transitions()[-1] == (OPEN, HALF_OPEN)
    assert r.events[-1].at == 1010.0


async def test_half_open_permits_exactly_n_trials_while_they_are_in_flight() -> None:
    r = await open_rig(permitted_calls_in_half_open=2)
    r.clock.advance(10)
    release = asyncio.Event()
    ran: list[int] = []
    trials = [asyncio.create_task(hold(r.breaker, release, ran)) for _ in range(2)]
    await asyncio.sleep(0)
    assert ran == [1, 1]
    assert r.breaker.snapshot().half_open_in_flight == 2
    assert not r.breaker.is_call_permitted
    with pytest.raises(CircuitOpenError):
        async with r.breaker.call():
            ran.append(99)
    assert ran == [1, 1]
    release.set()
    await asyncio.gather(*trials)
    assert r.breaker.state is CLOSED


async def test_half_open_trials_are_not_replenished_by_finished_ones() -> None:
    r = await open_rig(permitted_calls_in_half_open=3)
    r.clock.advance(10)
    await r.ok()
    await r.fail()
    assert r.breaker.state is HALF_OPEN
    assert r.breaker.snapshot().half_open_completed == 2
    await r.ok()  # third and last trial: 1 of 3 failed < 50%
    assert r.breaker.state is CLOSED


async def test_half_open_to_closed_resets_window_and_backoff() -> None:
    r = await open_rig()
    r.clock.advance(10)
    await r.ok()
    await r.ok()
    assert r.breaker.state is CLOSED
    snap = r.breaker.snapshot()
    assert (snap.calls_in_window, snap.consecutive_opens, snap.next_attempt_at) == (0, 0, None)
    for _ in range(4):
        await r.fail()
    snap = r.breaker.snapshot()
    assert snap.next_attempt_at is not None and snap.opened_at is not None
    assert snap.next_attempt_at - snap.opened_at == 10.0  # not 20: backoff was reset


async def test_half_open_to_open_grows_the_wait_up_to_the_cap() -> None:
    r = await open_rig()
    waits: list[float] = []
    for _ in range(4):
        snap = r.breaker.snapshot()
        assert snap.next_attempt_at is not None and snap.opened_at is not None
        waits.append(snap.next_attempt_at - snap.opened_at)
        r.clock.now = snap.next_attempt_at
        assert r.breaker.state is HALF_OPEN
        await r.fail()
        await r.fail()
        assert r.breaker.state is OPEN
    assert waits == [10.0, 20.0, 35.0, 35.0]
    assert r.breaker.snapshot().consecutive_opens == 5


async def test_half_open_slow_trials_reopen() -> None:
    r = await open_rig()
    r.clock.advance(10)
    await r.ok(duration=3.0)
    await r.ok()
    assert r.breaker.state is OPEN
    assert "slow" in r.events[-1].reason


async def test_half_open_any_failure_reopens_when_consecutive_threshold_is_set() -> None:
    r = rig(consecutive_failures_threshold=2, permitted_calls_in_half_open=3)
    await r.fail()
    await r.fail()
    assert r.breaker.state is OPEN
    r.clock.advance(10)
    release = asyncio.Event()
    ran: list[int] = []
    held = asyncio.create_task(hold(r.breaker, release, ran))
    await asyncio.sleep(0)
    await r.fail()  # one failure among 3 trials would be 33% < 50%, but it reopens now
    assert r.breaker.state is OPEN
    release.set()
    await held  # the stale trial's success does not close the new open state
    assert r.breaker.state is OPEN


@settings(max_examples=60, deadline=None)
@given(r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True), opens=st.integers(1, 6))
def test_jitter_stays_within_bounds(r: float, opens: int) -> None:
    async def scenario() -> tuple[float, float]:
        rg = rig(random_fn=lambda: r, wait_jitter=0.2)
        for _ in range(4):
            await rg.fail()
        base = 10.0
        for _ in range(opens - 1):
            snap = rg.breaker.snapshot()
            assert snap.next_attempt_at is not None
            rg.clock.now = snap.next_attempt_at
            await rg.fail()
            await rg.fail()
            base = min(base * 2, 35.0)
        snap = rg.breaker.snapshot()
        assert snap.next_attempt_at is not None and snap.opened_at is not None
        return snap.next_attempt_at - snap.opened_at, base

    wait, base = asyncio.run(scenario())
    assert base * 0.8 - 1e-9 <= wait <= min(base * 1.2, 35.0) + 1e-9
    assert wait == pytest.approx(min(base * (1 + 0.2 * (2 * r - 1)), 35.0))


async def test_max_wait_in_half_open_returns_to_open() -> None:
    r = await open_rig(max_wait_in_half_open=5.0, permitted_calls_in_half_open=1)
    r.clock.advance(10)
    release = asyncio.Event()
    ran: list[int] = []
    stuck = asyncio.create_task(hold(r.breaker, release, ran))
    await asyncio.sleep(0)
    assert r.breaker.state is HALF_OPEN
    r.clock.advance(4.999)
    assert r.breaker.state is HALF_OPEN
    r.clock.advance(0.001)
    assert not r.breaker.is_call_permitted
    assert r.breaker.state is OPEN
    assert "did not complete within 5 s" in r.events[-1].reason
    snap = r.breaker.snapshot()
    assert snap.next_attempt_at is not None and snap.opened_at is not None
    assert snap.next_attempt_at - snap.opened_at == 20.0  # a failed recovery: backoff grew
    release.set()
    await stuck  # the late trial's success is stale
    assert r.breaker.state is OPEN


# --- forced open, disabled, reset ----------------------------------------------------


async def test_forced_open_rejects_until_reset() -> None:
    r = rig(with_metrics=True)
    r.breaker.force_open()
    assert r.sample("circuit_breaker_state") == 3
    r.clock.advance(10_000)
    assert r.breaker.state is FORCED_OPEN
    assert not r.breaker.is_call_permitted
    with pytest.raises(CircuitOpenError):
        await r.ok()
    r.breaker.reset()
    assert r.breaker.state is CLOSED
    await r.ok()
    assert r.transitions() == [(CLOSED, FORCED_OPEN), (FORCED_OPEN, CLOSED)]
    assert r.sample("circuit_breaker_state") == 0
    assert r.sample("circuit_breaker_calls_total", outcome="rejected") == 1


async def test_disabled_permits_everything_and_records_nothing() -> None:
    r = rig(with_metrics=True, consecutive_failures_threshold=1)
    r.breaker.disable()
    for _ in range(20):
        await r.fail()
        await r.ok(duration=5.0)
    assert r.breaker.state is DISABLED
    assert r.breaker.snapshot().calls_in_window == 0
    assert r.sample("circuit_breaker_state") == 4
    for outcome in ("failure", "success", "slow_success", "rejected"):
        assert not r.sample("circuit_breaker_calls_total", outcome=outcome)
    r.breaker.reset()
    await r.fail()
    assert r.breaker.state is OPEN


async def test_reset_from_open_gives_an_empty_window_and_forgets_calls_in_flight() -> None:
    r = rig()
    release = asyncio.Event()
    ran: list[int] = []
    old = asyncio.create_task(hold(r.breaker, release, ran))
    await asyncio.sleep(0)
    for _ in range(4):
        await r.fail()
    assert r.breaker.state is OPEN
    r.breaker.reset()
    snap = r.breaker.snapshot()
    assert (snap.state, snap.calls_in_window, snap.consecutive_opens) == (CLOSED, 0, 0)
    release.set()
    await old  # started before the reset: not counted in the new window
    assert r.breaker.snapshot().calls_in_window == 0
    r.breaker.reset()  # from closed: no transition event
    assert r.transitions() == [(CLOSED, OPEN), (OPEN, CLOSED)]


# --- exception filters, cancellation ---------------------------------------------------


async def test_ignored_exceptions_are_neither_success_nor_failure() -> None:
    r = rig(with_metrics=True, ignore_exceptions=(KeyError,), consecutive_failures_threshold=2)
    await r.fail()
    for _ in range(10):
        await r.fail(KeyError("bad request"))
    assert r.breaker.snapshot().consecutive_failures == 1  # not reset, not increased
    assert r.breaker.snapshot().calls_in_window == 1
    assert r.sample("circuit_breaker_calls_total", outcome="ignored") == 10
    await r.fail()
    assert r.breaker.state is OPEN


async def test_ignore_is_checked_before_record() -> None:
    r = rig(ignore_exceptions=(LookupError,), record_exceptions=(Exception,))
    for _ in range(6):
        await r.fail(IndexError("x"))
    assert r.breaker.state is CLOSED
    assert r.breaker.snapshot().calls_in_window == 0


async def test_ignored_trial_frees_its_half_open_slot() -> None:
    r = await open_rig(ignore_exceptions=(KeyError,), permitted_calls_in_half_open=1)
    r.clock.advance(10)
    await r.fail(KeyError("x"))
    assert r.breaker.state is HALF_OPEN
    assert r.breaker.is_call_permitted
    await r.ok()
    assert r.breaker.state is CLOSED


async def test_record_exceptions_filter() -> None:
    r = rig(with_metrics=True, record_exceptions=(ServiceUnavailableError,))
    for _ in range(6):
        await r.fail(ValueError("the provider answered: bad input"))
    assert r.breaker.state is CLOSED  # unlisted exceptions count as successes
    assert r.sample("circuit_breaker_calls_total", outcome="success") == 6
    for _ in range(4):
        await r.fail(ServiceUnavailableError("llm", "503"))
    assert r.breaker.state is CLOSED  # 4 of the last 10
    await r.fail(ServiceUnavailableError("llm", "503"))
    assert r.breaker.state is OPEN  # 5 of the last 10
    assert r.sample("circuit_breaker_calls_total", outcome="failure") == 5


async def test_cancelled_call_is_neutral_and_frees_its_slot() -> None:
    r = await open_rig(with_metrics=True, permitted_calls_in_half_open=1)
    r.clock.advance(10)
    release = asyncio.Event()
    ran: list[int] = []
    task = asyncio.create_task(hold(r.breaker, release, ran))
    await asyncio.sleep(0)
    assert not r.breaker.is_call_permitted
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.breaker.state is HALF_OPEN
    assert r.breaker.snapshot().half_open_in_flight == 0
    assert r.breaker.is_call_permitted
    assert r.sample("circuit_breaker_calls_total", outcome="failure") == 4
    assert r.sample("circuit_breaker_calls_total", outcome="success") == 0


async def test_cancellation_in_closed_state_records_nothing() -> None:
    r = rig(consecutive_failures_threshold=1, record_exceptions=(BaseException,))
    r.breaker.on_error(asyncio.CancelledError(), 0.0)
    assert r.breaker.try_acquire()
    r.breaker.release()
    assert r.breaker.state is CLOSED
    assert r.breaker.snapshot().calls_in_window == 0


# --- low-level API, run ------------------------------------------------------------------


async def test_run_passes_arguments_and_records() -> None:
    r = rig(consecutive_failures_threshold=1)

    async def add(a: int, b: int, *, c: int) -> int:
        return a + b + c

    assert await r.breaker.run(add, 1, 2, c=3) == 6
    assert r.breaker.snapshot().calls_in_window == 1

    async def slow() -> None:
        r.clock.advance(1.0)

    await r.breaker.run(slow)
    snap = r.breaker.snapshot()
    assert (snap.calls_in_window, snap.slow_calls, snap.failed_calls) == (2, 1, 0)

    async def broken() -> None:
        raise Boom("x")

    with pytest.raises(Boom):
        await r.breaker.run(broken)
    assert r.breaker.state is OPEN


async def test_low_level_api() -> None:
    r = rig(consecutive_failures_threshold=2, permitted_calls_in_half_open=1)
    assert r.breaker.try_acquire()
    r.breaker.on_error(Boom(), 0.1)
    assert r.breaker.try_acquire()
    r.breaker.on_error(Boom(), 0.1)
    assert r.breaker.state is OPEN
    assert not r.breaker.try_acquire()
    r.clock.advance(10)
    assert r.breaker.try_acquire()
    assert not r.breaker.try_acquire()
    r.breaker.on_success(0.1)
    assert r.breaker.state is CLOSED


async def test_permit_settles_once_and_failure_overrides_filters() -> None:
    r = rig(record_exceptions=(ServiceUnavailableError,), consecutive_failures_threshold=1)
    permit = r.breaker.acquire_permit()
    assert isinstance(permit, Permit)
    permit.success()
    permit.failure()  # ignored: already settled
    assert r.breaker.state is CLOSED
    permit = r.breaker.acquire_permit()
    assert permit is not None
    permit.failure()  # e.g. the caller's own timeout
    assert r.breaker.state is OPEN


# --- windows -------------------------------------------------------------------------------


async def test_count_window_forgets_calls_beyond_its_size() -> None:
    r = rig(window_size=4, minimum_calls=4)
    await r.fail()
    for _ in range(5):
        await r.ok()
    snap = r.breaker.snapshot()
    assert (snap.calls_in_window, snap.failed_calls) == (4, 0)
    await r.fail()
    assert r.breaker.state is CLOSED  # 1 of the last 4
    await r.fail()
    assert r.breaker.state is OPEN  # 2 of the last 4; over all 8 calls it would be 37.5%


async def test_time_window_forgets_calls_older_than_its_span() -> None:
    r = rig(window_type="time", window_size=10.0, minimum_calls=4)
    await r.fail()
    await r.fail()
    r.clock.advance(9.999)
    assert r.breaker.snapshot().calls_in_window == 2
    r.clock.advance(0.001)
    assert r.breaker.snapshot().calls_in_window == 0
    await r.fail()
    for _ in range(3):
        await r.ok()
    assert r.breaker.state is CLOSED  # 1 of 4; with the two old failures it would be 50%
    assert r.breaker.snapshot().calls_in_window == 4


async def test_time_window_opens_on_recent_failures_only() -> None:
    r = rig(window_type="time", window_size=10.0, minimum_calls=4)
    for _ in range(4):
        await r.ok()
    r.clock.advance(10.0)
    await r.ok()
    await r.fail()
    await r.fail()
    assert r.breaker.state is CLOSED  # 3 recent calls < minimum_calls
    await r.fail()
    assert r.breaker.state is OPEN  # 3 of 4 recent; over all 8 calls it would be 37.5%


# --- metrics and listeners ----------------------------------------------------------------


async def test_metrics_follow_states_outcomes_and_transitions() -> None:
    r = rig(with_metrics=True)
    assert r.sample("circuit_breaker_state") == 0
    await r.ok()
    for _ in range(3):
        await r.fail()
    assert r.sample("circuit_breaker_state") == 1
    with pytest.raises(CircuitOpenError):
        await r.ok()
    r.clock.advance(10)
    assert r.breaker.state is HALF_OPEN
    assert r.sample("circuit_breaker_state") == 2
    await r.ok()
    await r.ok()
    assert r.sample("circuit_breaker_state") == 0
    assert r.sample("circuit_breaker_calls_total", outcome="success") == 3
    assert r.sample("circuit_breaker_calls_total", outcome="failure") == 3
    assert r.sample("circuit_breaker_calls_total", outcome="rejected") == 1
    for from_state, to_state in (
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ):
        value = r.sample(
            "circuit_breaker_transitions_total", from_state=from_state, to_state=to_state
        )
        assert value == 1
    assert (
        r.sample("circuit_breaker_transitions_total", from_state="open", to_state="closed") is None
    )


async def test_listeners_get_every_transition_in_order() -> None:
    r = rig()
    for _ in range(4):
        await r.fail()
    r.clock.advance(10)
    await r.fail()
    await r.fail()
    r.clock.advance(20)
    await r.ok()
    await r.ok()
    r.breaker.force_open()
    r.breaker.disable()
    r.breaker.reset()
    assert r.transitions() == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
        (CLOSED, FORCED_OPEN),
        (FORCED_OPEN, DISABLED),
        (DISABLED, CLOSED),
    ]
    assert [e.at for e in r.events[:5]] == [1000.0, 1010.0, 1010.0, 1030.0, 1030.0]
    assert all(e.name == "svc" and e.reason for e in r.events)


async def test_a_raising_listener_is_logged_and_does_not_break_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[BreakerTransition] = []

    def broken(event: BreakerTransition) -> None:
        raise RuntimeError("listener bug")

    clock = FakeClock()
    breaker = CircuitBreaker(
        "svc", config(consecutive_failures_threshold=1), clock=clock, listeners=[broken]
    )
    breaker.add_listener(seen.append)
    with caplog.at_level(logging.ERROR, logger="sa01.resilience.circuit_breaker"):
        with pytest.raises(Boom):
            async with breaker.call():
                raise Boom()
    assert breaker.state is OPEN
    assert [(e.from_state, e.to_state) for e in seen] == [(CLOSED, OPEN)]
    assert any("listener" in rec.message and rec.exc_info for rec in caplog.records)


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"window_type": "sliding"}, "window_type"),
        ({"window_size": 0}, "window_size"),
        ({"window_size": 2.5}, "window_size"),
        ({"window_type": "time", "window_size": 0.0}, "window_size"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"minimum_calls": 11}, "exceeds the count window_size"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 100.5}, "failure_rate_threshold"),
        ({"slow_call_rate_threshold": 0}, "slow_call_rate_threshold"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"consecutive_failures_threshold": 0}, "consecutive_failures_threshold"),
        ({"permitted_calls_in_half_open": 0}, "permitted_calls_in_half_open"),
        ({"wait_in_open": 0}, "wait_in_open"),
        ({"wait_backoff_multiplier": 0.5}, "wait_backoff_multiplier"),
        ({"max_wait_in_open": 5.0}, "max_wait_in_open"),
        ({"wait_jitter": 1.5}, "wait_jitter"),
        ({"wait_jitter": -0.1}, "wait_jitter"),
        ({"record_exceptions": ()}, "record_exceptions"),
        ({"record_exceptions": (int,)}, "record_exceptions"),
        ({"ignore_exceptions": [KeyError]}, "ignore_exceptions"),
        ({"max_wait_in_half_open": 0}, "max_wait_in_half_open"),
    ],
)
def test_config_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_defaults_are_valid_and_time_window_allows_more_minimum_calls() -> None:
    BreakerConfig()
    config(window_type="time", window_size=1.5, minimum_calls=1000)
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker("")


# --- stateful test against a reference model ------------------------------------------------

MODEL_CONFIG = BreakerConfig(
    window_type="count",
    window_size=5,
    minimum_calls=3,
    failure_rate_threshold=50.0,
    slow_call_rate_threshold=60.0,
    slow_call_duration=1.0,
    consecutive_failures_threshold=3,
    permitted_calls_in_half_open=2,
    wait_in_open=10.0,
    wait_backoff_multiplier=2.0,
    max_wait_in_open=30.0,
    wait_jitter=0.0,
    ignore_exceptions=(KeyError,),
    max_wait_in_half_open=25.0,
)

KINDS = ("success", "failure", "slow_success", "slow_failure", "ignored", "cancelled")


class Model:
    """A deliberately plain re-statement of the state machine, recomputing from lists."""

    def __init__(self, cfg: BreakerConfig) -> None:
        self.cfg = cfg
        self.state = CLOSED
        self.generation = 0
        self.window: deque[str] = deque(maxlen=int(cfg.window_size))
        self.run_of_failures = 0
        self.trials_started = 0
        self.trials_outcomes: list[str] = []
        self.opens_in_a_row = 0
        self.reopen_at = 0.0
        self.half_open_at = 0.0

    def move(self, state: BreakerState, now: float) -> None:
        previous = self.state
        self.state = state
        self.generation += 1
        self.trials_started = 0
        self.trials_outcomes = []
        if state is CLOSED:
            self.window.clear()
            self.run_of_failures = 0
            self.opens_in_a_row = 0
        elif state is OPEN:
            self.opens_in_a_row = self.opens_in_a_row + 1 if previous is HALF_OPEN else 1
            wait = self.cfg.wait_in_open * 2 ** (self.opens_in_a_row - 1)
            self.reopen_at = now + min(wait, self.cfg.max_wait_in_open)
        elif state is HALF_OPEN:
            self.half_open_at = now

    def tick(self, now: float) -> None:
        if self.state is OPEN and now >= self.reopen_at:
            self.move(HALF_OPEN, now)
        limit = self.cfg.max_wait_in_half_open
        if self.state is HALF_OPEN and limit is not None and now - self.half_open_at >= limit:
            self.move(OPEN, now)

    def acquire(self, now: float) -> int | None:
        if self.state in (CLOSED, DISABLED):
            return self.generation
        if self.state is FORCED_OPEN:
            return None
        self.tick(now)
        if self.state is HALF_OPEN and self.trials_started < 2:
            self.trials_started += 1
            return self.generation
        return None

    @staticmethod
    def failed(kind: str) -> bool:
        return kind in ("failure", "slow_failure")

    @staticmethod
    def slow(kind: str) -> bool:
        return kind in ("slow_success", "slow_failure")

    def finish(self, generation: int, kind: str, now: float) -> None:
        if self.state is DISABLED or generation != self.generation:
            return
        if self.state is HALF_OPEN:
            if kind == "cancelled":
                self.trials_started -= 1
                return
            self.tick(now)
            if self.state is not HALF_OPEN:
                return
            if kind == "ignored":
                self.trials_started -= 1
                return
            self.trials_outcomes.append(kind)
            if self.failed(kind):
                self.move(OPEN, now)  # the consecutive threshold is set
                return
            if len(self.trials_outcomes) == 2:
                fails = sum(map(self.failed, self.trials_outcomes))
                slows = sum(map(self.slow, self.trials_outcomes))
                if fails / 2 * 100 >= 50.0 or slows / 2 * 100 >= 60.0:
                    self.move(OPEN, now)
                else:
                    self.move(CLOSED, now)
            return
        if self.state is not CLOSED or kind in ("cancelled", "ignored"):
            return
        self.window.append(kind)
        self.run_of_failures = self.run_of_failures + 1 if self.failed(kind) else 0
        if self.run_of_failures >= 3:
            self.move(OPEN, now)
            return
        calls = len(self.window)
        if calls >= 3:
            fails = sum(map(self.failed, self.window))
            slows = sum(map(self.slow, self.window))
            if fails / calls * 100 >= 50.0 or slows / calls * 100 >= 60.0:
                self.move(OPEN, now)


def settle(permit: Permit, kind: str) -> None:
    if kind == "success":
        permit.success(duration=0.1)
    elif kind == "slow_success":
        permit.success(duration=1.0)
    elif kind == "failure":
        permit.error(Boom(), duration=0.1)
    elif kind == "slow_failure":
        permit.error(Boom(), duration=1.0)
    elif kind == "ignored":
        permit.error(KeyError("x"), duration=0.1)
    else:
        permit.error(asyncio.CancelledError(), duration=0.1)


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, held calls, clock moves and manual control vs. the model."""

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = CircuitBreaker("model", MODEL_CONFIG, clock=self.clock)
        self.model = Model(MODEL_CONFIG)
        self.loop = asyncio.new_event_loop()
        self.ran = 0

    def teardown(self) -> None:
        self.loop.close()

    @initialize()
    def start(self) -> None:
        assert self.breaker.state is CLOSED

    @rule(kind=st.sampled_from(KINDS[:-1]))
    def call_through_context_manager(self, kind: str) -> None:
        permitted = self.model.acquire(self.clock.now)
        ran = False

        async def body() -> None:
            nonlocal ran
            ran = True
            self.clock.advance(1.0 if self.model.slow(kind) else 0.1)
            if kind in ("failure", "slow_failure"):
                raise Boom()
            if kind == "ignored":
                raise KeyError("x")

        async def attempt() -> BaseException | None:
            try:
                async with self.breaker.call():
                    await body()
            except (CircuitOpenError, Boom, KeyError) as exc:
                return exc
            return None

        outcome = self.loop.run_until_complete(attempt())
        if permitted is None:
            assert isinstance(outcome, CircuitOpenError)
            assert not ran  # a rejected call never runs
        else:
            assert ran
            assert not isinstance(outcome, CircuitOpenError)
            self.model.finish(permitted, kind, self.clock.now)

    @rule(target=held)
    def begin_held_call(self) -> tuple[Permit, int] | None:
        generation = self.model.acquire(self.clock.now)
        permit = self.breaker.acquire_permit()
        assert (permit is None) == (generation is None)
        if permit is None or generation is None:
            return None
        return permit, generation

    @rule(call=consumes(held), kind=st.sampled_from(KINDS))
    def finish_held_call(self, call: tuple[Permit, int] | None, kind: str) -> None:
        if call is None:
            return
        permit, generation = call
        settle(permit, kind)
        self.model.finish(generation, kind, self.clock.now)

    @rule(seconds=st.sampled_from([0.5, 5.0, 9.99, 10.0, 20.0, 25.0, 40.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def advance_to_next_attempt(self) -> None:
        """Jump to the end of the wait in open (makes half-open frequent)."""
        next_attempt = self.breaker.snapshot().next_attempt_at
        if next_attempt is not None:
            self.clock.now = next_attempt

    @rule()
    def trip(self) -> None:
        """Fail until the breaker leaves closed (makes open frequent)."""
        for _ in range(3):
            if self.model.state is not CLOSED:
                break
            self.call_through_context_manager("failure")

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        if self.model.state is not FORCED_OPEN:
            self.model.move(FORCED_OPEN, self.clock.now)

    @rule()
    def disable(self) -> None:
        self.breaker.disable()
        if self.model.state is not DISABLED:
            self.model.move(DISABLED, self.clock.now)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.move(CLOSED, self.clock.now)

    @invariant()
    def state_matches_the_model(self) -> None:
        permitted = self.breaker.is_call_permitted
        self.model.tick(self.clock.now)
        snap = self.breaker.snapshot()
        assert snap.state is self.model.state
        if snap.state is CLOSED:
            assert snap.calls_in_window == len(self.model.window)
            assert snap.consecutive_failures == self.model.run_of_failures
        if snap.state is OPEN:
            assert snap.next_attempt_at == self.model.reopen_at
        if snap.state is HALF_OPEN:
            assert snap.half_open_in_flight + snap.half_open_completed <= 2
            assert snap.half_open_in_flight == self.model.trials_started - len(
                self.model.trials_outcomes
            )
        assert permitted == (
            snap.state in (CLOSED, DISABLED)
            or (snap.state is HALF_OPEN and self.model.trials_started < 2)
        )


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
