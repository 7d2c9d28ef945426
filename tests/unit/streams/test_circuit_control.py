"""What ``/circuits`` and ``faust -A streams circuit`` say about breakers, without a worker."""

from __future__ import annotations

import io

import pytest

from sa01.resilience.circuit_breaker import BreakerConfig, CircuitBreaker
from streams.circuits import ACTIONS, apply_action, circuits_document, format_circuits
from streams.console import Console


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(name: str, clock: Clock) -> CircuitBreaker:
    config = BreakerConfig(consecutive_failures_threshold=2, wait_in_open=30.0, wait_jitter=0.0)
    return CircuitBreaker(name, config, clock=clock)


def test_the_document_lists_every_breaker_and_counts_circuits_per_state() -> None:
    clock = Clock()
    breakers = {n: breaker(n, clock) for n in ("llm:openai/gpt-4o", "tts:elevenlabs", "s")}
    failing = breakers["tts:elevenlabs"]
    for _ in range(2):
        failing.try_acquire()
        failing.on_error(RuntimeError("down"), 0.1)
    clock.now += 10

    document = circuits_document(breakers, "w1")

    assert list(document["circuits"]) == ["llm:openai/gpt-4o", "s", "tts:elevenlabs"]
    assert document["counts"] == {
        "closed": 2,
        "open": 1,
        "half_open": 0,
        "forced_open": 0,
        "disabled": 0,
    }
    opened = document["circuits"]["tts:elevenlabs"]
    assert opened["state"] == "open" and opened["gauge"] == 1
    assert opened["failed_calls"] == 2 and opened["consecutive_opens"] == 1
    assert opened["open_for_seconds"] == 10.0 and opened["retry_in_seconds"] == 20.0
    assert document["circuits"]["s"]["retry_in_seconds"] is None


@pytest.mark.parametrize(
    ("action", "state"),
    [("open", "forced_open"), ("disable", "disabled"), ("close", "closed"), ("reset", "closed")],
)
def test_each_action_moves_the_breaker(action: str, state: str) -> None:
    subject = breaker("llm:x/y", Clock())
    closing = action in ("close", "reset")
    if closing:
        subject.force_open()

    previous, new = apply_action(subject, action)

    assert new == state == subject.state.value
    assert previous == ("forced_open" if closing else "closed")
    assert set(ACTIONS) == {"open", "close", "reset", "disable"}


def test_a_forced_open_breaker_refuses_calls_until_closed() -> None:
    subject = breaker("llm:x/y", Clock())
    apply_action(subject, "open")
    assert subject.acquire_permit() is None
    apply_action(subject, "close")
    assert subject.acquire_permit() is not None


def test_the_table_is_plain_when_piped_and_coloured_on_a_terminal() -> None:
    clock = Clock()
    subject = breaker("llm:openai/gpt-4o", clock)
    subject.force_open()
    rows = list(circuits_document({subject.name: subject}, "w1")["circuits"].values())

    plain = format_circuits(rows, Console(io.StringIO(), colour=False))
    coloured = format_circuits(rows, Console(io.StringIO(), colour=True))

    assert plain[0].split() == ["CIRCUIT", "STATE", "CALLS", "FAILED", "FAILURE%", "RETRY", "IN"]
    assert plain[1].split() == ["llm:openai/gpt-4o", "forced_open", "0", "0", "0"]
    assert "\033[" not in "".join(plain) and "\033[1;31mforced_open\033[0m" in coloured[1]
