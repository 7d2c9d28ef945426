"""One breaker registry: what it lists is what the metrics and the health monitor read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.producer import PRODUCER_GATE, gate_config
from sa01.resilience.circuit_breaker import BreakerConfig, BreakerState, CircuitBreaker
from sa01.resilience.health import DEFAULT_SERVICES
from sa01.resilience.monitor import DegradationMonitor
from sa01.resilience.probes import StaticProbe
from sa01.resilience.registry import BreakerRegistry
from schemas.messages import DegradationEvent, ServiceState
from streams.runtime import Runtime
from tests.unit.resilience.test_circuit_breaker import FakeClock

QUICK = BreakerConfig(wait_in_open=5.0, max_wait_in_open=5.0, wait_jitter=0.0)


def breaker(name: str, clock: FakeClock | None = None) -> CircuitBreaker:
    return CircuitBreaker(name, QUICK, clock=clock or FakeClock())


def test_register_get_and_items_sorted_by_name() -> None:
    registry = BreakerRegistry()
    b, a = breaker("llm:b"), breaker("kafka:producer")
    assert registry.register("llm:b", b) is b
    registry.register("kafka:producer", a)
    registry.register("llm:b", b)  # the same breaker again: a no-op

    assert registry.get("llm:b") is b and registry.get("nothing") is None
    assert registry.items() == [("kafka:producer", a), ("llm:b", b)]
    assert list(registry) == registry.names() == ["kafka:producer", "llm:b"]
    assert "llm:b" in registry and len(registry) == 2


def test_a_taken_name_or_a_name_that_is_not_the_breakers_is_refused() -> None:
    registry = BreakerRegistry()
    registry.register("llm:a", breaker("llm:a"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("llm:a", breaker("llm:a"))
    with pytest.raises(ValueError, match="another name"):
        registry.register("llm:x", breaker("llm:y"))


def test_states_by_prefix_and_gauge_values() -> None:
    registry = BreakerRegistry()
    for name in ("llm:a", "llm:b", "tts:c"):
        registry.register(name, breaker(name))
    registry.get("llm:b").force_open()  # type: ignore[union-attr]

    assert registry.states("llm:") == {"a": "closed", "b": "forced_open"}
    assert registry.states("llm:")["b"] is BreakerState.FORCED_OPEN
    assert registry.gauge_values() == {"llm:a": 0, "llm:b": 3, "tts:c": 0}


def test_metrics_serve_exactly_the_registered_breakers_in_their_state_now() -> None:
    metrics = Metrics()
    clock = FakeClock()
    stray = CircuitBreaker("not-registered", QUICK, metrics=metrics)
    registry = BreakerRegistry()
    gate = registry.register("kafka:producer", CircuitBreaker("kafka:producer", QUICK, clock=clock))
    registry.register("llm:a", breaker("llm:a"))
    metrics.read_breakers(registry)
    gate.trip("all brokers down")
    clock.advance(5.0)  # the wait is over: the gate reads half_open, lazily

    rendered = metrics.render().decode()

    states = dict(re.findall(r'circuit_breaker_state\{name="([^"]+)"\} (\S+)', rendered))
    assert states == {"kafka:producer": "2.0", "llm:a": "0.0"}
    assert stray.state is BreakerState.CLOSED


def test_trip_opens_a_closed_or_half_open_breaker_and_leaves_the_others() -> None:
    clock = FakeClock()
    gate = breaker("g", clock)
    assert gate.trip("event") is True
    assert gate.state is BreakerState.OPEN
    assert gate.trip("event again") is False  # already open, wait not over
    clock.advance(5.0)
    assert gate.trip("still down") is True  # half-open by now: open again
    assert gate.state is BreakerState.OPEN

    forced = breaker("f")
    forced.force_open()
    disabled = breaker("d")
    disabled.disable()
    assert forced.trip("x") is False and forced.state is BreakerState.FORCED_OPEN
    assert disabled.trip("x") is False and disabled.state is BreakerState.DISABLED


def test_try_now_moves_only_an_open_breaker_to_half_open() -> None:
    clock = FakeClock()
    gate = breaker("g", clock)
    assert gate.try_now("back") is False and gate.state is BreakerState.CLOSED
    gate.trip("down")
    assert gate.try_now("back") is True
    assert gate.state is BreakerState.HALF_OPEN  # before its 5 s wait is over
    assert gate.try_now("back again") is False and gate.state is BreakerState.HALF_OPEN
    permit = gate.acquire_permit()
    assert permit is not None
    permit.failure()  # the trial decides: open again
    assert gate.state is BreakerState.OPEN

    forced = breaker("f")
    forced.force_open()
    assert forced.try_now("back") is False and forced.state is BreakerState.FORCED_OPEN


def test_the_producer_gate_has_one_trial_and_a_fixed_wait() -> None:
    settings = Settings(producer_circuit_failures=3, producer_circuit_open_seconds=5.0)
    config = gate_config(settings)
    assert config.consecutive_failures_threshold == 3
    assert config.permitted_calls_in_half_open == 1
    assert config.wait_in_open == config.max_wait_in_open == 5.0
    assert PRODUCER_GATE == "kafka:producer"


async def test_the_monitors_kafka_verdict_opens_the_registered_gate() -> None:
    settings = Settings()
    registry = BreakerRegistry()
    gate = registry.register(PRODUCER_GATE, breaker(PRODUCER_GATE))
    other = registry.register("llm:a", breaker("llm:a"))
    published: list[DegradationEvent] = []

    async def publish(event: DegradationEvent) -> None:
        published.append(event)

    monitor = DegradationMonitor(
        [],
        DEFAULT_SERVICES,
        Metrics(),
        publish=publish,
        breakers=registry,
        trips={"kafka": PRODUCER_GATE},
    )
    await monitor.observe(StaticProbe(settings, "postgres", ServiceState.UNAVAILABLE, "down"))
    assert gate.state is BreakerState.CLOSED  # another service's verdict
    await monitor.observe(StaticProbe(settings, "kafka", ServiceState.HEALTHY, ""))
    assert gate.state is BreakerState.CLOSED
    await monitor.observe(StaticProbe(settings, "kafka", ServiceState.UNAVAILABLE, "no broker"))

    assert gate.state is BreakerState.OPEN
    assert other.state is BreakerState.CLOSED
    assert any(e.service == "kafka" for e in published)

    await monitor.observe(StaticProbe(settings, "kafka", ServiceState.UNAVAILABLE, "no broker"))
    assert gate.state is BreakerState.OPEN  # no change: the wait goes on
    await monitor.observe(StaticProbe(settings, "kafka", ServiceState.HEALTHY, ""))
    assert gate.state is BreakerState.HALF_OPEN  # back: the next send is the trial


def test_the_runtime_registers_the_producer_gate_and_the_responders_breakers(
    tmp_path: Path,
) -> None:
    chains = tmp_path / "chains.toml"
    chains.write_text('[chains]\nchat = ["openai/gpt-4o", "anthropic/claude-3-5-sonnet-latest"]\n')
    settings = Settings(
        responder="litellm",
        llm_chains_file=str(chains),
        openai_api_key=SecretStr("sk-test"),
        anthropic_api_key=SecretStr("sk-ant-test"),
    )
    metrics = Metrics()
    runtime = Runtime(settings, metrics)

    names = runtime.breakers.names()
    assert runtime.breakers.get(PRODUCER_GATE) is runtime.producer.gate
    assert {"llm:openai/gpt-4o", "llm:anthropic/claude-3-5-sonnet-latest", "somabrain"} <= set(
        names
    )
    assert any(n.startswith("storage:") for n in names)
    rendered = metrics.render().decode()
    assert set(re.findall(r'circuit_breaker_state\{name="([^"]+)"\}', rendered)) == set(names)
    assert runtime.monitor.breakers is runtime.breakers
    assert runtime.monitor.trips == {"kafka": PRODUCER_GATE}
