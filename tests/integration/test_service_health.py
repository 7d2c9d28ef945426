"""service_health: the same for every worker, recovered from the changelog on restart."""

from __future__ import annotations

import pytest

from sa01.core.settings import Settings
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
