"""Unit tests of resilience/fallback.py: the one fallback chain for every provider kind.

Breakers use a fake clock. The only wall-clock wait is the 0.05 s provider timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from sa01.core.errors import FallbackExhaustedError, ServiceUnavailableError
from sa01.resilience.circuit_breaker import BreakerConfig, BreakerState, CircuitBreaker
from sa01.resilience.fallback import ChainLink, ChainResult, FallbackChain
from tests.support.clock import FakeClock


class BadRequest(Exception):
    """A request every provider would refuse."""


class Provider:
    """Records each call; answers, raises or hangs as told."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.error: BaseException | None = None
        self.hang = False
        self.never = asyncio.Event()

    async def answer(self, prompt: str) -> str:
        self.calls += 1
        if self.hang:
            await self.never.wait()
        if self.error is not None:
            raise self.error
        return f"{self.name}: {prompt}"


def breaker_config(**overrides: Any) -> BreakerConfig:
    values: dict[str, Any] = {
        "window_size": 10,
        "minimum_calls": 10,
        "consecutive_failures_threshold": 2,
        "permitted_calls_in_half_open": 1,
        "wait_in_open": 30.0,
        "max_wait_in_open": 300.0,
        "wait_jitter": 0.0,
        **overrides,
    }
    return BreakerConfig(**values)


class Rig:
    def __init__(self, *names: str, timeout: float = 1.0, **config: Any) -> None:
        self.clock = FakeClock()
        self.providers = {name: Provider(name) for name in names}
        self.breakers = {
            name: CircuitBreaker(name, breaker_config(**config), clock=self.clock) for name in names
        }
        self.failovers: list[tuple[str, str]] = []
        self.chain: FallbackChain[Provider] = FallbackChain(
            [ChainLink(name, self.providers[name], self.breakers[name], timeout) for name in names],
            on_failover=lambda a, b: self.failovers.append((a, b)),
            name="llm",
        )

    async def ask(self, prompt: str = "hi", **kwargs: Any) -> ChainResult[str]:
        return await self.chain.run(lambda p: p.answer(prompt), **kwargs)

    def calls(self) -> dict[str, int]:
        return {name: p.calls for name, p in self.providers.items()}


async def test_primary_answers_without_failover() -> None:
    rig = Rig("a", "b")
    result = await rig.ask()
    assert (result.value, result.provider) == ("a: hi", "a")
    assert result.attempts == [("a", "ok")]
    assert result.failovers == [] and rig.failovers == []
    assert rig.calls() == {"a": 1, "b": 0}


async def test_open_circuit_is_skipped_without_calling_the_provider() -> None:
    rig = Rig("a", "b")
    rig.providers["a"].error = ServiceUnavailableError("a", "down")
    await rig.ask()
    await rig.ask()
    assert rig.breakers["a"].state is BreakerState.OPEN
    assert rig.calls() == {"a": 2, "b": 2}
    result = await rig.ask()
    assert rig.calls() == {"a": 2, "b": 3}
    assert result.provider == "b"
    assert result.attempts == [("a", "skipped_open"), ("b", "ok")]
    assert result.failovers == [("a", "b")]
    assert rig.failovers == [("a", "b")] * 3


async def test_fails_over_on_exception_and_records_it_on_the_breaker() -> None:
    rig = Rig("a", "b", "c")
    rig.providers["a"].error = ServiceUnavailableError("a", "503")
    rig.providers["b"].error = ConnectionError("refused")
    result = await rig.ask("q")
    assert (result.value, result.provider) == ("c: q", "c")
    assert result.attempts == [
        ("a", "failed: ServiceUnavailableError"),
        ("b", "failed: ConnectionError"),
        ("c", "ok"),
    ]
    assert result.failovers == [("a", "b"), ("b", "c")] == rig.failovers
    assert rig.breakers["a"].snapshot().failed_calls == 1
    assert rig.breakers["b"].snapshot().failed_calls == 1
    assert rig.breakers["c"].snapshot().failed_calls == 0


async def test_fails_over_on_timeout_and_counts_it_as_a_breaker_failure() -> None:
    # The breaker's filters would call a TimeoutError a success; the chain's timeout
    # is recorded as a failure all the same.
    rig = Rig("a", "b", timeout=0.05, record_exceptions=(ServiceUnavailableError,))
    rig.providers["a"].hang = True
    result = await rig.ask()
    assert result.provider == "b"
    assert result.attempts == [("a", "timeout"), ("b", "ok")]
    assert rig.failovers == [("a", "b")]
    snap = rig.breakers["a"].snapshot()
    assert (snap.failed_calls, snap.consecutive_failures) == (1, 1)


async def test_a_providers_own_timeout_error_is_a_failure_not_a_chain_timeout() -> None:
    rig = Rig("a", "b")
    rig.providers["a"].error = TimeoutError("read timeout")
    result = await rig.ask()
    assert result.attempts == [("a", "failed: TimeoutError"), ("b", "ok")]


async def test_no_failover_when_should_fail_over_says_no() -> None:
    rig = Rig("a", "b", ignore_exceptions=(BadRequest,))
    error = BadRequest("prompt too long")
    rig.providers["a"].error = error
    with pytest.raises(BadRequest) as caught:
        await rig.ask(should_fail_over=lambda e: not isinstance(e, BadRequest))
    assert caught.value is error
    assert rig.calls() == {"a": 1, "b": 0}
    assert rig.failovers == []
    assert rig.breakers["a"].snapshot().calls_in_window == 0  # ignored by its breaker


async def test_all_failing_raises_exhausted_and_never_returns_the_primary() -> None:
    rig = Rig("a", "b", "c")
    rig.providers["a"].error = ServiceUnavailableError("a", "503")
    rig.providers["b"].error = ConnectionError("refused")
    last = RuntimeError("boom")
    rig.providers["c"].error = last
    with pytest.raises(FallbackExhaustedError) as caught:
        await rig.ask()
    message = str(caught.value)
    assert "'llm'" in message
    assert "a=failed: ServiceUnavailableError" in message
    assert "b=failed: ConnectionError" in message
    assert "c=failed: RuntimeError" in message
    assert caught.value.__cause__ is last
    assert rig.calls() == {"a": 1, "b": 1, "c": 1}
    assert rig.failovers == [("a", "b"), ("b", "c")]


async def test_all_circuits_open_raises_without_calling_any_provider() -> None:
    rig = Rig("a", "b")
    for breaker in rig.breakers.values():
        breaker.force_open()
    with pytest.raises(FallbackExhaustedError) as caught:
        await rig.ask()
    assert "a=skipped_open, b=skipped_open" in str(caught.value)
    assert caught.value.__cause__ is None
    assert rig.calls() == {"a": 0, "b": 0}
    assert rig.failovers == []


async def test_skips_then_failures_each_report_a_failover_to_the_next_tried_link() -> None:
    rig = Rig("a", "b", "c")
    rig.breakers["a"].force_open()
    rig.providers["b"].error = ConnectionError("refused")
    result = await rig.ask()
    assert result.attempts == [("a", "skipped_open"), ("b", "failed: ConnectionError"), ("c", "ok")]
    assert result.failovers == [("a", "b"), ("b", "c")]
    rig.breakers["b"].force_open()
    result = await rig.ask()
    assert result.failovers == [("a", "c"), ("b", "c")]


async def test_open_primary_is_not_called_until_half_open_and_is_used_after_recovery() -> None:
    rig = Rig("a", "b")
    primary = rig.providers["a"]
    primary.error = ServiceUnavailableError("a", "down")
    await rig.ask()
    await rig.ask()
    assert rig.breakers["a"].state is BreakerState.OPEN
    for _ in range(5):
        rig.clock.advance(5.0)
        assert (await rig.ask()).provider == "b"
    assert primary.calls == 2  # 25 s of the 30 s wait: never called
    primary.error = None
    rig.clock.advance(5.0)
    assert rig.chain.states()["a"] is BreakerState.HALF_OPEN
    result = await rig.ask()  # the one trial call
    assert (result.provider, primary.calls) == ("a", 3)
    assert rig.chain.states() == {"a": BreakerState.CLOSED, "b": BreakerState.CLOSED}
    assert (await rig.ask()).provider == "a"


async def test_a_failed_trial_reopens_and_the_primary_waits_longer() -> None:
    rig = Rig("a", "b")
    primary = rig.providers["a"]
    primary.error = ServiceUnavailableError("a", "down")
    await rig.ask()
    await rig.ask()
    rig.clock.advance(30.0)
    assert (await rig.ask()).attempts == [("a", "failed: ServiceUnavailableError"), ("b", "ok")]
    assert rig.breakers["a"].state is BreakerState.OPEN
    rig.clock.advance(30.0)  # the wait doubled to 60 s
    await rig.ask()
    assert primary.calls == 3


async def test_half_open_trial_in_flight_makes_concurrent_runs_skip_the_link() -> None:
    rig = Rig("a", "b")
    primary = rig.providers["a"]
    primary.error = ServiceUnavailableError("a", "down")
    await rig.ask()
    await rig.ask()
    rig.clock.advance(30.0)
    primary.error = None
    primary.hang = True
    trial = asyncio.create_task(rig.ask())
    await asyncio.sleep(0)
    assert primary.calls == 3
    others = [await rig.ask() for _ in range(3)]
    assert {r.provider for r in others} == {"b"}
    assert primary.calls == 3  # exactly one trial
    primary.hang = False
    primary.never.set()
    assert (await trial).provider == "a"


async def test_cancellation_releases_the_link_and_does_not_fail_over() -> None:
    rig = Rig("a", "b", permitted_calls_in_half_open=1)
    primary = rig.providers["a"]
    primary.hang = True
    task = asyncio.create_task(rig.ask())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.calls() == {"a": 1, "b": 0}
    assert rig.failovers == []
    assert rig.breakers["a"].snapshot().calls_in_window == 0


async def test_a_raising_on_failover_callback_does_not_break_the_chain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    a, b = Provider("a"), Provider("b")
    a.error = ConnectionError("x")

    def broken(from_name: str, to_name: str) -> None:
        raise RuntimeError("metrics bug")

    chain = FallbackChain(
        [
            ChainLink("a", a, CircuitBreaker("a", breaker_config(), clock=clock), 1.0),
            ChainLink("b", b, CircuitBreaker("b", breaker_config(), clock=clock), 1.0),
        ],
        on_failover=broken,
    )
    with caplog.at_level(logging.ERROR, logger="sa01.resilience.fallback"):
        result = await chain.run(lambda p: p.answer("x"))
    assert result.provider == "b"
    assert any("on_failover" in rec.message for rec in caplog.records)


def test_construction_is_validated() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("x", breaker_config(), clock=clock)
    with pytest.raises(ValueError, match="at least one link"):
        FallbackChain[Provider]([])
    with pytest.raises(ValueError, match="duplicate"):
        FallbackChain([ChainLink("x", 1, breaker, 1.0), ChainLink("x", 2, breaker, 1.0)])
    with pytest.raises(ValueError, match="timeout"):
        ChainLink("x", 1, breaker, 0)
    with pytest.raises(ValueError, match="name"):
        ChainLink("", 1, breaker, 1.0)


async def test_one_chain_type_serves_any_provider_kind() -> None:
    clock = FakeClock()

    async def store_primary(blob: bytes) -> str:
        raise ServiceUnavailableError("s3", "down")

    async def store_local(blob: bytes) -> str:
        return f"local:{len(blob)}"

    chain = FallbackChain(
        [
            ChainLink("s3", store_primary, CircuitBreaker("s3", clock=clock), 1.0),
            ChainLink("disk", store_local, CircuitBreaker("disk", clock=clock), 1.0),
        ]
    )
    result = await chain.run(lambda store: store(b"abc"))
    assert (result.value, result.provider) == ("local:3", "disk")
