"""service_health: the same for every worker, recovered from the changelog on restart."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sa01.core.settings import Settings
from sa01.core.topics import DEGRADATION_EVENTS
from schemas.codec import encode_message
from schemas.headers import ERRORS_MESSAGE
from schemas.messages import DegradationEvent, ServiceState
from tests.support.kafka import consume, produce_raw
from tests.support.status import degradation_events, transitions, wait_status
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration


async def test_two_workers_see_the_same_service_health_and_only_the_leader_emits(
    stack: Settings, workers: WorkerFactory
) -> None:
    # No SomaBrain listens on this address: it is unavailable from the first probe.
    settings = stack.model_copy(
        update={"somabrain_url": "http://127.0.0.1:9", "health_probes": "postgres,somabrain"}
    )
    first = workers.start(settings, instance="w1")
    second = workers.start(settings, instance="w2")
    expected = {"postgres": "healthy", "somabrain": "unavailable"}

    def same_view(doc: dict[str, object]) -> bool:
        services = doc.get("services", {})
        assert isinstance(services, dict)
        return all(services.get(k, {}).get("state") == v for k, v in expected.items())

    one, _ = wait_status(first, same_view)
    two, _ = wait_status(second, same_view)
    leaders = [one["worker"]["leader"], two["worker"]["leader"]]
    events = degradation_events(settings, 3)

    assert sorted(leaders) == [False, True]
    assert transitions(events, "somabrain") == ["unavailable"]
    assert transitions(events, "postgres") == ["healthy"]


async def test_a_restarted_worker_has_service_health_back_before_it_serves_status(
    stack: Settings, workers: WorkerFactory
) -> None:
    settings = stack.model_copy(
        update={"somabrain_url": "http://127.0.0.1:9", "health_probes": "postgres,somabrain"}
    )
    worker = workers.start(settings, instance="w1")
    before, _ = wait_status(
        worker, lambda doc: doc.get("table", {}).get("somabrain") == "unavailable"
    )
    worker.kill()
    # Restarted with probes that cannot run yet: what /status shows comes from the table.
    slow = settings.model_copy(update={"health_interval_seconds": 3600.0})
    restarted = workers.start(slow, instance="w1", wait=False)
    restarted.wait_ready()

    after, _ = wait_status(restarted, lambda doc: "somabrain" in doc.get("services", {}))

    assert after["services"]["somabrain"]["state"] == "unavailable"
    assert after["services"]["somabrain"]["since"] == before["services"]["somabrain"]["since"]


async def test_a_starting_worker_starts_from_the_events_its_group_has_not_folded_yet(
    stack: Settings, workers: WorkerFactory
) -> None:
    # An event no worker has folded: a worker killed after folding it, before its table's
    # changelog write and its commit, leaves exactly that.
    settings = stack.model_copy(
        update={
            "somabrain_url": "http://127.0.0.1:9",
            "health_probes": "postgres,somabrain",
            "health_interval_seconds": 3600.0,
        }
    )
    announced = DegradationEvent(
        service="somabrain",
        state=ServiceState.UNAVAILABLE,
        reason="ConnectError: refused",
        observed_at=datetime.now(UTC) - timedelta(minutes=5),
        source="monitor",
    )
    produce_raw(
        settings, settings.topic(DEGRADATION_EVENTS), [(b"somabrain", encode_message(announced))]
    )

    worker = workers.start(settings)
    status, _ = wait_status(
        worker, lambda doc: doc.get("table", {}).get("somabrain") == "unavailable"
    )
    events = degradation_events(settings, 2, until=lambda es: "postgres" in {e.service for e in es})

    # Its first probe found the state already known: no new event, and since stays.
    assert status["services"]["somabrain"]["since"] == announced.observed_at.isoformat()
    assert [e.event_id for e in events if e.service == "somabrain"] == [announced.event_id]


async def test_an_event_dated_in_the_future_is_dead_lettered_and_freezes_no_service(
    stack: Settings, workers: WorkerFactory
) -> None:
    # Folded, an event dated a day ahead would make every later event of its service
    # "older": that service's health would be frozen for every worker until then.
    settings = stack.model_copy(update={"health_probes": "postgres"})
    topic = settings.topic(DEGRADATION_EVENTS)
    ahead = DegradationEvent(service="somabrain", state=ServiceState.UNAVAILABLE).model_dump(
        mode="json"
    )
    ahead["observed_at"] = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    back = DegradationEvent(service="somabrain", state=ServiceState.HEALTHY)
    produce_raw(
        settings,
        topic,
        [(b"somabrain", json.dumps(ahead).encode()), (b"somabrain", encode_message(back))],
    )

    worker = workers.start(settings)
    wait_status(worker, lambda doc: doc.get("table", {}).get("somabrain") == "healthy")
    dead = consume(settings, f"{topic}.dlq", 1, timeout=60)

    assert [json.loads(r.value or b"{}")["event_id"] for r in dead] == [ahead["event_id"]]
    assert "observed_at" in dead[0].headers[ERRORS_MESSAGE]
