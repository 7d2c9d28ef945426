"""Runtime.status reads the service_health table at most every CLUSTER_VIEW_MAX_AGE_SECONDS;
the conversation's lanes give a session one slot."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.resilience.health import ServiceHealth
from schemas.messages import ServiceState
from streams.runtime import CLUSTER_VIEW_MAX_AGE_SECONDS, Runtime


def test_the_table_is_read_again_once_its_view_is_older_than_the_max_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows: dict[str, ServiceHealth] = {}
    reads: list[int] = []

    def table_rows() -> dict[str, ServiceHealth]:
        reads.append(1)
        return dict(rows)

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    runtime = Runtime(Settings(), Metrics(), table_rows=table_rows)
    assert runtime.status().state("redis") is ServiceState.HEALTHY
    rows["redis"] = ServiceHealth("redis", ServiceState.UNAVAILABLE, since=datetime.now(UTC))
    for _ in range(100):  # a burst of replies: one read of the table
        assert runtime.status().state("redis") is ServiceState.HEALTHY
    assert len(reads) == 1
    clock[0] += CLUSTER_VIEW_MAX_AGE_SECONDS
    assert runtime.status().state("redis") is ServiceState.UNAVAILABLE
    assert len(reads) == 2


def test_a_session_holds_one_slot_and_a_background_lane_its_share() -> None:
    settings = Settings(background_read_ahead=100, background_lane_max_share=0.2)
    runtime = Runtime(settings, Metrics())
    assert runtime.lanes.lane_limit == 1
    assert runtime.consumers["memory"].lanes.lane_limit == 20


async def test_the_monitor_is_seeded_with_the_events_not_folded_into_the_table_yet() -> None:
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    runtime = Runtime(Settings(health_probes="postgres"), Metrics(), table_rows=dict)
    unfolded = {"somabrain": ServiceHealth("somabrain", ServiceState.UNAVAILABLE, since=since)}
    runtime.monitor.start = _no_probes  # type: ignore[method-assign]

    await runtime.start_monitor(unfolded)

    seeded = runtime.monitor.observed()["somabrain"]
    assert (seeded.state, seeded.since) == (ServiceState.UNAVAILABLE, since)
    assert runtime.status_ready.is_set()


async def _no_probes() -> None:
    """The monitor's start without its probe loops."""
