"""Stop Redis, PostgreSQL or the Kafka broker under a running worker: one event each way.

These tests stop shared services, so they run in the serial phase of ``make test``
(marker ``stops_services``).
"""

from __future__ import annotations

import time

import pytest

from sa01.core.settings import Settings
from tests.fix_services import ServiceEndpoints
from tests.support.status import degradation_events, state_of, transitions, wait_status
from tests.support.worker import WorkerFactory

pytestmark = [pytest.mark.faults, pytest.mark.stops_services]


@pytest.mark.parametrize("service", ["redis", "postgres", "kafka"])
async def test_a_stopped_service_yields_one_unavailable_and_one_healthy_event(
    stack: Settings, workers: WorkerFactory, services: ServiceEndpoints, service: str
) -> None:
    # Slowness is not what this test is about: a broker that has just restarted may
    # answer slowly for a few seconds, which would rightly read as "degraded".
    settings = stack.model_copy(
        update={"health_probes": "postgres,kafka,redis", "health_slow_seconds": 5.0}
    )
    worker = workers.start(settings)
    wait_status(worker, lambda d: state_of(service, "healthy")(d) and d["worker"]["leader"])
    budget = settings.health_interval_seconds + settings.health_timeout_seconds

    stop_began = time.monotonic()
    services.control("stop", service)
    stop_took = time.monotonic() - stop_began
    try:
        status, detected_in = wait_status(worker, state_of(service, "unavailable"), timeout=60)
    finally:
        services.control("start", service)
    _, recovered_in = wait_status(worker, state_of(service, "healthy"), timeout=90)
    print(
        f"\n{service}: stop took {stop_took:.2f}s; unavailable in /status {detected_in:.2f}s "
        f"after it returned; healthy {recovered_in:.2f}s after the start returned"
    )

    assert detected_in <= budget + 3.0, f"detected after {detected_in:.1f}s (budget {budget}s)"
    assert status["services"][service]["reason"]
    # While Kafka is down the events wait in the outbox: the relay sends them once the
    # broker is back, after its backoff. Wait for this service's own three events.
    events_began = time.monotonic()
    events = degradation_events(
        settings,
        3,
        timeout=90,
        settle=5.0,
        until=lambda read: len(transitions(read, service)) >= 3,
    )
    print(f"{service}: its events were read {time.monotonic() - events_began:.2f}s later")
    assert transitions(events, service) == ["healthy", "unavailable", "healthy"]
    unavailable = next(e for e in events if e.service == service and e.state == "unavailable")
    assert unavailable.previous_state == "healthy"
    assert worker.alive
