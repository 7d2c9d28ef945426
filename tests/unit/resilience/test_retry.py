"""The retry helper: exponential, jittered, bounded waits that really grow."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sa01.core.errors import InfrastructureUnavailableError, PermanentError
from sa01.resilience.retry import Backoff, retry_while_unavailable


def test_the_waits_double_up_to_the_maximum_without_jitter() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@given(
    failures=st.integers(min_value=0, max_value=10_000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_a_jittered_wait_lies_between_the_cut_and_the_ceiling(
    failures: int, draw: float, jitter: float
) -> None:
    backoff = Backoff(initial=0.2, maximum=5.0, jitter=jitter)
    wait = backoff.delay(failures, random=lambda: draw)
    ceiling = backoff.ceiling(failures)
    assert 0.0 <= wait <= ceiling <= 5.0
    assert wait >= ceiling * (1 - jitter) - 1e-12


@pytest.mark.parametrize("bad", [{"initial": 0}, {"maximum": 0.1, "initial": 1}, {"jitter": 2}])
def test_a_policy_that_makes_no_sense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**bad)


async def test_outages_are_retried_with_growing_waits_until_the_call_succeeds() -> None:
    calls = 0
    waits: list[float] = []

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 5:
            raise InfrastructureUnavailableError("postgres", "down")
        return "done"

    async def record(stopping: asyncio.Event | None, seconds: float) -> None:
        waits.append(seconds)

    result = await retry_while_unavailable(
        flaky, backoff=Backoff(initial=0.1, maximum=0.5, jitter=0.0), sleep=record
    )

    assert result == "done"
    assert waits == [0.1, 0.2, 0.4, 0.5]


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def poisoned() -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("never")

    with pytest.raises(PermanentError):
        await retry_while_unavailable(poisoned, backoff=Backoff())
    assert calls == 1


async def test_stopping_ends_the_retries_with_the_last_outage() -> None:
    stopping = asyncio.Event()

    async def down() -> None:
        stopping.set()
        raise InfrastructureUnavailableError("kafka", "down")

    with pytest.raises(InfrastructureUnavailableError):
        await retry_while_unavailable(down, backoff=Backoff(), stopping=stopping)
