"""The service_health table's fold and its rows read back as ServiceHealth."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sa01.resilience.health import ServiceHealth
from schemas.messages import CircuitState, DegradationEvent, ServiceState
from tables.service_health import fold, health_from_row

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def event(**fields: object) -> DegradationEvent:
    values: dict[str, object] = {
        "service": "somabrain",
        "state": ServiceState.DEGRADED,
        "circuit": CircuitState.HALF_OPEN,
        "reason": "slow",
        "latency_ms": 120.5,
        "observed_at": WHEN,
        "source": "monitor",
    }
    return DegradationEvent.model_validate(values | fields)


def test_a_folded_row_reads_back_as_the_health_the_event_announced() -> None:
    announced = event()
    row = fold(None, announced)
    assert row is not None
    stored = json.loads(json.dumps(row))  # the table keeps JSON

    assert health_from_row(stored) == ServiceHealth.from_event(announced)
    assert stored["event_id"] == announced.event_id


def test_a_row_without_latency_or_circuit_reads_closed_and_none() -> None:
    row = fold(None, event(latency_ms=None))
    assert row is not None
    del row["circuit"]

    health = health_from_row(row)
    assert (health.latency_ms, health.circuit) == (None, CircuitState.CLOSED)


def test_an_older_or_repeated_event_leaves_the_row_alone() -> None:
    first = event()
    row = fold(None, first)
    assert row is not None

    assert fold(row, event(observed_at=WHEN - timedelta(seconds=1))) is None
    assert fold(row, first) is None
    assert fold(row, event(observed_at=WHEN + timedelta(seconds=1))) is not None


def test_an_event_in_the_rows_state_keeps_the_rows_since() -> None:
    # A restarted worker (or a new leader) announces the state it first sees: no change.
    row = fold(None, event(state=ServiceState.UNAVAILABLE, reason="refused"))
    assert row is not None
    again = event(
        state=ServiceState.UNAVAILABLE, reason="timed out", observed_at=WHEN + timedelta(seconds=3)
    )

    folded = fold(row, again)

    assert folded is not None
    assert (folded["since"], folded["reason"], folded["event_id"]) == (
        WHEN.isoformat(),
        "timed out",
        again.event_id,
    )
