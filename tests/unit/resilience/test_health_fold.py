"""The fold rule of a service's health: an observation in the state already known keeps
when that state began."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sa01.resilience.health import ServiceHealth, latest
from schemas.messages import ServiceState

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def health(state: ServiceState, at: datetime, reason: str = "") -> ServiceHealth:
    return ServiceHealth("somabrain", state, since=at, reason=reason)


def test_a_first_observation_is_taken_as_it_is() -> None:
    seen = health(ServiceState.UNAVAILABLE, T0)
    assert latest(None, seen) is seen


def test_a_later_observation_of_the_same_state_keeps_since_and_brings_its_details() -> None:
    known = health(ServiceState.UNAVAILABLE, T0, "refused")
    seen = health(ServiceState.UNAVAILABLE, T0 + timedelta(seconds=3), "timed out")

    result = latest(known, seen)

    assert (result.state, result.since, result.reason) == (
        ServiceState.UNAVAILABLE,
        T0,
        "timed out",
    )


def test_a_later_observation_of_another_state_starts_a_new_since() -> None:
    known = health(ServiceState.UNAVAILABLE, T0)
    seen = health(ServiceState.HEALTHY, T0 + timedelta(seconds=3))
    assert latest(known, seen) is seen


def test_an_older_observation_changes_nothing() -> None:
    known = health(ServiceState.HEALTHY, T0)
    assert latest(known, health(ServiceState.UNAVAILABLE, T0 - timedelta(seconds=1))) is known
