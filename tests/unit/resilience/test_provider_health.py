"""Provider health: breaker-read states and chain-level details kept current."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.resilience.health import provider_specs
from sa01.resilience.monitor import DegradationMonitor
from sa01.resilience.probes import BreakerProbe, ChainProbe, Probe, ProbeResult, StoreProbe
from schemas.messages import DegradationEvent, ServiceState


def breaker_probe(service: str, states: dict[str, str]) -> BreakerProbe:
    return BreakerProbe(Settings(), service, lambda: states)


async def test_a_circuit_waiting_for_its_trial_reads_available_and_says_so() -> None:
    # A fallback nobody calls stays half-open: it must not read degraded for ever.
    result = await breaker_probe("tts.elevenlabs", {"elevenlabs": "half_open"}).check()
    assert result.state is ServiceState.HEALTHY
    assert result.reason == "waiting for a trial call: elevenlabs"


async def test_one_open_circuit_of_one_reads_unavailable_with_a_plain_reason() -> None:
    result = await breaker_probe("tts.openai", {"openai": "open"}).check()
    assert (result.state, result.reason) == (ServiceState.UNAVAILABLE, "circuit open")


async def test_a_chain_is_unavailable_only_when_every_provider_is() -> None:
    states = {"a": "open", "b": "closed"}
    members: list[Probe] = [
        breaker_probe("x.a", {"a": states["a"]}),
        breaker_probe("x.b", {"b": states["b"]}),
    ]
    chain = ChainProbe(Settings(), "x", members)
    assert (await chain.check()).state is ServiceState.DEGRADED
    members[1] = breaker_probe("x.b", {"b": "open"})
    chain = ChainProbe(Settings(), "x", members)
    assert (await chain.check()).state is ServiceState.UNAVAILABLE


class _Scripted:
    def __init__(self, service: str, results: list[ProbeResult]) -> None:
        self.service = service
        self.interval = 1.0
        self.timeout = 1.0
        self.results = results

    async def check(self) -> ProbeResult:
        return self.results.pop(0)

    async def close(self) -> None:
        return None


async def test_a_new_reason_in_the_same_state_shows_in_status_without_an_event() -> None:
    published: list[DegradationEvent] = []

    async def publish(event: DegradationEvent) -> None:
        published.append(event)

    probe = _Scripted(
        "tts",
        [
            ProbeResult(ServiceState.DEGRADED, "unavailable: tts.elevenlabs"),
            ProbeResult(ServiceState.DEGRADED, "unavailable: tts.openai"),
        ],
    )
    monitor = DegradationMonitor(
        [probe],
        provider_specs("tts", ["elevenlabs", "openai"], "native"),
        Metrics(),
        publish=publish,
    )
    first = await monitor.observe(probe)
    second = await monitor.observe(probe)
    observed: Mapping[str, object] = monitor.observed()

    assert [e.reason for e in first] == ["unavailable: tts.elevenlabs"]
    assert second == []
    assert monitor.observed()["tts"].reason == "unavailable: tts.openai"
    assert monitor.observed()["tts"].since == first[0].observed_at
    assert "tts" in observed


async def test_the_storage_chain_reuses_its_stores_recent_answers_instead_of_asking_twice() -> None:
    calls = {"s3": 0}

    async def s3_down() -> None:
        calls["s3"] += 1
        raise ConnectionRefusedError("s3 refuses")

    store = StoreProbe(Settings(), "storage.s3", s3_down)
    chain = ChainProbe(Settings(), "storage", [store])
    with pytest.raises(ConnectionRefusedError):
        await store.check()  # the store's own probe, on its schedule

    result = await chain.check()

    assert result.state is ServiceState.UNAVAILABLE
    assert calls["s3"] == 1
