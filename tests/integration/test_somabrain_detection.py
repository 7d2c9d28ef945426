"""SomaBrain hanging or failing is detected by its probe: one event each way."""

from __future__ import annotations

import pytest

from loopback import FailureMode, SomaBrainServer
from sa01.core.settings import Settings
from tests.support.status import degradation_events, state_of, transitions, wait_status
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", [FailureMode.HANG, FailureMode.ERROR_500])
async def test_somabrain_hanging_or_failing_yields_one_unavailable_then_one_healthy_event(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer, mode: FailureMode
) -> None:
    settings = stack.model_copy(
        update={"somabrain_url": somabrain.base_url, "health_probes": "somabrain"}
    )
    worker = workers.start(settings)
    wait_status(worker, state_of("somabrain", "healthy"))
    # The probe waits longer than SomaBrain's own 3 s per sub-check before it gives up.
    budget = settings.health_interval_seconds + settings.somabrain_health_timeout_seconds + 0.5

    somabrain.set_mode(mode)
    status, detected_in = wait_status(worker, state_of("somabrain", "unavailable"))
    somabrain.set_mode(FailureMode.OK)
    _, recovered_in = wait_status(worker, state_of("somabrain", "healthy"))
    print(f"\nsomabrain {mode}: detected in {detected_in:.2f}s, recovered in {recovered_in:.2f}s")

    assert detected_in <= budget + 2.0
    expected_reason = "no answer within" if mode is FailureMode.HANG else "critical"
    assert expected_reason in status["services"]["somabrain"]["reason"]
    events = degradation_events(settings, 3)
    assert transitions(events, "somabrain") == ["healthy", "unavailable", "healthy"]
