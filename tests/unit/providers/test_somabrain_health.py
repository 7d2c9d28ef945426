"""The SomaBrain probe's verdict for each health body the real server gives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from loopback import FailureMode
from loopback.somabrain_server import SomaBrainServer
from sa01.core.settings import Settings
from sa01.providers.somabrain_health import SomaBrainProbe, read_health_body
from schemas.messages import CircuitState, ServiceState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def brain() -> Iterator[SomaBrainServer]:
    with SomaBrainServer(name="brain") as server:
        yield server


@pytest.fixture
async def probe(brain: SomaBrainServer) -> AsyncIterator[SomaBrainProbe]:
    somabrain = SomaBrainProbe(Settings(somabrain_url=brain.base_url))
    try:
        yield somabrain
    finally:
        await somabrain.close()


async def test_everything_up_is_healthy(probe: SomaBrainProbe) -> None:
    result = await probe.check()
    assert (result.state, result.circuit) == (ServiceState.HEALTHY, CircuitState.CLOSED)
    assert result.reason == "memory backend up"


async def test_memory_backend_down_is_unavailable_although_remember_answers_200(
    brain: SomaBrainServer, probe: SomaBrainProbe
) -> None:
    brain.set_backend_down(True)
    result = await probe.check()
    assert result.state is ServiceState.UNAVAILABLE
    assert result.reason.startswith("memory backend down (soma_fractal_memory unhealthy")


@pytest.mark.parametrize("down", [{"opa"}, {"minio"}, {"schema_registry"}, {"opa", "kafka"}])
async def test_services_that_are_not_memory_do_not_judge(
    brain: SomaBrainServer, probe: SomaBrainProbe, down: set[str]
) -> None:
    brain.set_health_faults(unhealthy=down)
    result = await probe.check()
    assert result.state is ServiceState.HEALTHY, "status critical over a non-memory service"
    for name in down:
        assert f"{name} unhealthy" in result.reason
    assert "status critical" in result.reason


async def test_no_vector_store_is_healthy_and_says_why_ready_is_false(
    brain: SomaBrainServer, probe: SomaBrainProbe
) -> None:
    brain.set_health_faults(no_vector_store=True)
    result = await probe.check()
    assert result.state is ServiceState.HEALTHY, "remember and recall work without it"
    assert "no vector store" in result.reason and "ready false" in result.reason


async def test_memory_circuit_open_is_degraded(
    brain: SomaBrainServer, probe: SomaBrainProbe
) -> None:
    brain.set_queue_for_replay(True)
    result = await probe.check()
    assert (result.state, result.circuit) == (ServiceState.DEGRADED, CircuitState.OPEN)
    assert result.reason.startswith("memory circuit open")


async def test_error_500_mode_is_unavailable(brain: SomaBrainServer, probe: SomaBrainProbe) -> None:
    brain.set_mode(FailureMode.ERROR_500)
    assert (await probe.check()).state is ServiceState.UNAVAILABLE


async def test_a_health_slower_than_somabrains_sub_check_timeout_still_gets_a_verdict(
    brain: SomaBrainServer, probe: SomaBrainProbe
) -> None:
    brain.set_mode(FailureMode.SLOW, delay_seconds=3.2)
    assert probe.timeout > 3.0 + 1.0, "one sub-check may take SomaBrain 3 s"
    result = await asyncio.wait_for(probe.check(), probe.timeout)
    assert result.state is ServiceState.DEGRADED
    assert result.reason.startswith("slow: ") and "memory backend up" in result.reason


async def test_unreachable_is_unavailable() -> None:
    probe = SomaBrainProbe(Settings(somabrain_url="http://127.0.0.1:9"))
    try:
        result = await probe.check()
    finally:
        await probe.close()
    assert result.state is ServiceState.UNAVAILABLE
    assert result.reason.startswith("/health failed: ClientConnectorError: Cannot connect")


def verdict(body: dict[str, Any]) -> tuple[ServiceState, str]:
    reading = read_health_body(body, time.monotonic())
    return reading.state, reading.reason


def test_hand_made_bodies() -> None:
    sfm_not_configured = {
        "internal_services": {
            "soma_fractal_memory": {"status": "healthy", "details": {"configured": False}}
        }
    }
    assert verdict(sfm_not_configured) == (
        ServiceState.UNAVAILABLE,
        "memory backend not configured in SomaBrain",
    )
    assert verdict({"memory_ok": False})[0] is ServiceState.UNAVAILABLE
    # The real server says predictor_ok false while remember and recall work.
    assert verdict({"memory_ok": True, "predictor_ok": False}) == (
        ServiceState.HEALTHY,
        "memory backend up; ignored (not memory): predictor_ok false",
    )
    assert verdict({"status": "healthy", "ready": True}) == (
        ServiceState.HEALTHY,
        "memory backend up",
    )
