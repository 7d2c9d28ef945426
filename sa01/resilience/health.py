"""Service health, degradation levels and the agent-wide degradation status.

Levels are numbers (``DegradationLevel`` is an ``IntEnum``), so the overall level is
the maximum over services, never a comparison of strings. Each monitored service
declares the level its degradation or outage costs the agent, and which services it
depends on: a dependent of an unavailable service is itself degraded (a cascade).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from schemas.messages import CircuitState, DegradationEvent, ServiceState

__all__ = [
    "DEFAULT_SERVICES",
    "DegradationLevel",
    "DegradationStatus",
    "ServiceHealth",
    "ServiceSpec",
    "cascade",
    "latest",
    "provider_specs",
    "state_value",
]


class DegradationLevel(enum.IntEnum):
    """How much of the agent's behaviour is affected."""

    NONE = 0
    MINOR = 1
    MODERATE = 2
    SEVERE = 3
    CRITICAL = 4


_STATE_VALUE = {
    ServiceState.HEALTHY: 0,
    ServiceState.DEGRADED: 1,
    ServiceState.UNAVAILABLE: 2,
    ServiceState.NOT_CONFIGURED: -1,
}


def state_value(state: ServiceState) -> int:
    """The ``service_health_state`` gauge value: 0 healthy, 1 degraded, 2 unavailable,
    -1 not configured."""
    return _STATE_VALUE[state]


@dataclass(frozen=True)
class ServiceSpec:
    """A monitored service: what its trouble costs and what it depends on."""

    name: str
    when_degraded: DegradationLevel
    when_unavailable: DegradationLevel
    depends_on: tuple[str, ...] = ()
    fallback: str = ""

    def level(self, state: ServiceState) -> DegradationLevel:
        """The level this service's ``state`` puts the agent in."""
        if state is ServiceState.UNAVAILABLE:
            return self.when_unavailable
        if state is ServiceState.DEGRADED:
            return self.when_degraded
        return DegradationLevel.NONE


#: The seed's monitored services (SRS section 4) and the conversation journey.
DEFAULT_SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("postgres", DegradationLevel.SEVERE, DegradationLevel.CRITICAL, fallback="none"),
    ServiceSpec("kafka", DegradationLevel.MODERATE, DegradationLevel.SEVERE, fallback="outbox"),
    ServiceSpec("redis", DegradationLevel.MINOR, DegradationLevel.MINOR, fallback="session-only"),
    ServiceSpec(
        "somabrain", DegradationLevel.MINOR, DegradationLevel.MODERATE, fallback="pending_memory"
    ),
    ServiceSpec("temporal", DegradationLevel.MINOR, DegradationLevel.MINOR, fallback="queue"),
    ServiceSpec("llm", DegradationLevel.MINOR, DegradationLevel.SEVERE, fallback="chain"),
    ServiceSpec(
        "conversation",
        DegradationLevel.MODERATE,
        DegradationLevel.CRITICAL,
        depends_on=("llm", "somabrain", "kafka", "postgres"),
    ),
)


@dataclass(frozen=True)
class ServiceHealth:
    """The current health of one service (a fold of its degradation events)."""

    service: str
    state: ServiceState
    circuit: CircuitState = CircuitState.CLOSED
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    reason: str = ""
    latency_ms: float | None = None
    source: str = ""

    @classmethod
    def from_event(cls, event: DegradationEvent) -> ServiceHealth:
        """The health an event announces."""
        return cls(
            service=event.service,
            state=event.state,
            circuit=event.circuit,
            since=event.observed_at,
            reason=event.reason,
            latency_ms=event.latency_ms,
            source=event.source,
        )

    def as_json(self) -> dict[str, object]:
        """JSON-ready fields."""
        return {
            "service": self.service,
            "state": self.state.value,
            "circuit": self.circuit.value,
            "since": self.since.isoformat(),
            "reason": self.reason,
            "latency_ms": self.latency_ms,
            "source": self.source,
        }


def latest(known: ServiceHealth | None, observed: ServiceHealth) -> ServiceHealth:
    """What is known of a service after ``observed``: the fold rule of its health.

    An observation older than what is known changes nothing. One in the state already
    known brings its details (reason, circuit, latency) but keeps ``since``: the service
    has been in that state since then. A worker that starts, or a new leader, reports
    the state it first sees; that is no change of state, and must not reset ``since``.
    """
    if known is None:
        return observed
    if observed.since < known.since:
        return known
    if observed.state is known.state:
        return replace(observed, since=known.since)
    return observed


def provider_specs(chain: str, providers: Iterable[str], fallback: str) -> list[ServiceSpec]:
    """Specs of a provider chain (``tts``, ``stt``, ``storage``) and of each provider in it.

    One provider down costs little (the chain fails over); the whole chain down costs
    more, but the agent still answers (``fallback`` says how).
    """
    specs = [
        ServiceSpec(
            chain,
            DegradationLevel.MINOR,
            DegradationLevel.MODERATE,
            fallback=fallback,
        )
    ]
    specs += [
        ServiceSpec(
            f"{chain}.{name}", DegradationLevel.MINOR, DegradationLevel.MINOR, fallback=chain
        )
        for name in providers
    ]
    return specs


def cascade(
    observed: Mapping[str, ServiceHealth], specs: Iterable[ServiceSpec]
) -> dict[str, list[str]]:
    """For each service, the dependencies of it that are unavailable (transitively)."""
    by_name = {spec.name: spec for spec in specs}
    down: dict[str, list[str]] = {}

    def unavailable_under(name: str, seen: frozenset[str]) -> list[str]:
        found: list[str] = []
        spec = by_name.get(name)
        for dependency in spec.depends_on if spec is not None else ():
            if dependency in seen:
                continue
            health = observed.get(dependency)
            if health is not None and health.state is ServiceState.UNAVAILABLE:
                found.append(dependency)
            found += [
                d for d in unavailable_under(dependency, seen | {dependency}) if d not in found
            ]
        return found

    for name in by_name:
        dependencies = unavailable_under(name, frozenset({name}))
        if dependencies:
            down[name] = dependencies
    return down


@dataclass(frozen=True)
class DegradationStatus:
    """The agent-wide view every journey reads before acting."""

    services: Mapping[str, ServiceHealth]
    specs: Mapping[str, ServiceSpec]

    def state(self, service: str) -> ServiceState:
        """A service's state; a service never observed counts as healthy."""
        health = self.services.get(service)
        return health.state if health is not None else ServiceState.HEALTHY

    def is_available(self, service: str) -> bool:
        """False only when the service is known to be unavailable."""
        return self.state(service) is not ServiceState.UNAVAILABLE

    def level(self, service: str) -> DegradationLevel:
        """The level one service's state costs the agent."""
        spec = self.specs.get(service)
        if spec is None:
            return DegradationLevel.NONE
        return spec.level(self.state(service))

    @property
    def overall(self) -> DegradationLevel:
        """The worst level over every service."""
        return max((self.level(name) for name in self.services), default=DegradationLevel.NONE)

    def as_json(self) -> dict[str, object]:
        """The ``/status`` document."""
        return {
            "overall": self.overall.name.lower(),
            "overall_level": int(self.overall),
            "services": {
                name: {**health.as_json(), "level": self.level(name).name.lower()}
                for name, health in sorted(self.services.items())
            },
        }
