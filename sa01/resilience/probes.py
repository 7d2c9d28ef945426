"""Health probes of the monitored services.

Each probe answers one question — is the service healthy, degraded or unavailable —
within its timeout (the monitor enforces it, so a hung service is detected by the
timeout, not waited on). A probe may raise: the monitor reports the exception as
``unavailable`` with its text as the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
import redis.asyncio as aioredis
from confluent_kafka.admin import AdminClient

from sa01.core.kafka_security import librdkafka_config
from sa01.core.logging import librdkafka_logger
from sa01.core.settings import Settings
from sa01.resilience.circuit_breaker import BreakerState
from schemas.messages import CircuitState, ServiceState

if TYPE_CHECKING:
    from temporalio.client import Client as TemporalClient

__all__ = [
    "CHAIN_PROBES",
    "BreakerProbe",
    "ChainProbe",
    "KafkaProbe",
    "PostgresProbe",
    "Probe",
    "ProbeResult",
    "RedisProbe",
    "StaticProbe",
    "StoreProbe",
    "TemporalProbe",
    "TimedProbe",
    "default_probes",
    "probes_enabled",
]


@dataclass(frozen=True)
class ProbeResult:
    """One observation of a service."""

    state: ServiceState
    reason: str = ""
    circuit: CircuitState = CircuitState.CLOSED
    latency_ms: float | None = None


class Probe(Protocol):
    """Checks one service; ``interval`` and ``timeout`` are in seconds."""

    service: str
    interval: float
    timeout: float

    async def check(self) -> ProbeResult:
        """Observe the service once (may raise: the monitor reports it unavailable)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class TimedProbe:
    """Shared timing: a healthy answer slower than ``slow`` is reported degraded."""

    service = ""

    def __init__(self, settings: Settings) -> None:
        self.interval = settings.health_interval_seconds
        self.timeout = settings.health_timeout_seconds
        self.slow = settings.health_slow_seconds

    def _judge(self, started: float, reason: str = "") -> ProbeResult:
        latency = (time.monotonic() - started) * 1000
        if latency > self.slow * 1000:
            return ProbeResult(ServiceState.DEGRADED, f"slow: {latency:.0f} ms", latency_ms=latency)
        return ProbeResult(ServiceState.HEALTHY, reason, latency_ms=latency)

    async def close(self) -> None:
        """Nothing to release by default."""


class PostgresProbe(TimedProbe):
    """``SELECT 1`` on a fresh connection (independent of the application's pool)."""

    service = "postgres"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.url = settings.database_url

    async def check(self) -> ProbeResult:
        """Connect and run ``SELECT 1``."""
        started = time.monotonic()
        conn = await psycopg.AsyncConnection.connect(
            self.url, connect_timeout=max(1, int(self.timeout)), autocommit=True
        )
        async with conn:
            await conn.execute("SELECT 1")
        return self._judge(started)


class RedisProbe(TimedProbe):
    """``PING``."""

    service = "redis"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry_on_timeout=False,
        )

    async def check(self) -> ProbeResult:
        """Send ``PING``."""
        started = time.monotonic()
        await self.client.ping()
        return self._judge(started)

    async def close(self) -> None:
        """Close the client."""
        await self.client.aclose()


class KafkaProbe(TimedProbe):
    """A metadata round trip through the admin client (run in a thread)."""

    service = "kafka"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.client_config = librdkafka_config(settings)
        self._admin: AdminClient | None = None

    def _metadata(self) -> int:
        if self._admin is None:
            config: dict[str, Any] = {
                **self.client_config,
                "socket.timeout.ms": 2000,
                # Its connect failures go through the rate-limited logger, not to stderr
                # twenty times a second while the broker is down.
                "logger": librdkafka_logger(),
            }
            self._admin = AdminClient(config)
        try:
            metadata = self._admin.list_topics(timeout=self.timeout)
        finally:
            self._admin.poll(0)  # hands the queued log lines to the logger
        return len(metadata.brokers)

    async def check(self) -> ProbeResult:
        """Ask a broker for cluster metadata."""
        started = time.monotonic()
        brokers = await asyncio.to_thread(self._metadata)
        if brokers == 0:
            return ProbeResult(ServiceState.UNAVAILABLE, "no broker in the metadata")
        return self._judge(started)


class TemporalProbe(TimedProbe):
    """``GetSystemInfo`` through the official ``temporalio`` client (extra ``temporal``).

    Opt-in (``SA01_HEALTH_PROBES`` names ``temporal``). A port that accepts TCP but does not
    speak Temporal's gRPC service is unavailable, unlike with a TCP connect. Without the
    ``temporalio`` package the probe reads unavailable and says how to install it. The
    connected client is kept between checks and dropped after a failure.
    """

    service = "temporal"
    NOT_INSTALLED = (
        "the temporalio package is not installed (pip install 'sa01-resilience[temporal]')"
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.target = settings.temporal_host
        self._client: TemporalClient | None = None

    async def check(self) -> ProbeResult:
        """Connect if needed, then ask the frontend for its system info."""
        try:
            from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
            from temporalio.client import Client
        except ImportError:
            return ProbeResult(ServiceState.UNAVAILABLE, self.NOT_INSTALLED)
        started = time.monotonic()
        try:
            if self._client is None:
                self._client = await Client.connect(self.target)
            info = await self._client.workflow_service.get_system_info(
                GetSystemInfoRequest(), timeout=timedelta(seconds=self.timeout)
            )
        except BaseException:
            self._client = None
            raise
        return self._judge(started, f"server {info.server_version or '?'}")


_REFUSING = (BreakerState.OPEN, BreakerState.FORCED_OPEN)


class BreakerProbe(TimedProbe):
    """The health of a provider chain, read from its breakers' states."""

    def __init__(
        self, settings: Settings, service: str, states: Callable[[], Mapping[str, str]]
    ) -> None:
        super().__init__(settings)
        self.service = service
        self.states = states

    async def check(self) -> ProbeResult:
        """All circuits open: unavailable; some: degraded; none: healthy.

        A half-open circuit (its wait is over, the next call is a trial) counts as
        available: a fallback nobody calls would otherwise read degraded for ever. The
        reason says it is waiting for its trial.
        """
        states = self.states()
        open_ = sorted(name for name, state in states.items() if state in _REFUSING)
        trial = sorted(name for name, state in states.items() if state == BreakerState.HALF_OPEN)
        waiting = f"waiting for a trial call: {', '.join(trial)}" if trial else ""
        if states and len(open_) == len(states):
            reason = "circuit open" if len(states) == 1 else "every circuit is open"
            return ProbeResult(ServiceState.UNAVAILABLE, reason, CircuitState.OPEN)
        if open_:
            reason = "; ".join(r for r in (f"open: {', '.join(open_)}", waiting) if r)
            return ProbeResult(ServiceState.DEGRADED, reason)
        circuit = CircuitState.HALF_OPEN if trial else CircuitState.CLOSED
        return ProbeResult(ServiceState.HEALTHY, waiting, circuit)


class StoreProbe(TimedProbe):
    """An object store's own check (S3 ``HeadBucket``, the local root writable, Redis ``PING``)."""

    def __init__(self, settings: Settings, service: str, check: Callable[[], Awaitable[None]]):
        super().__init__(settings)
        self.service = service
        self._check = check
        self._last: tuple[float, ProbeResult] | None = None

    async def check(self) -> ProbeResult:
        """Run the store's check (and remember its answer for :meth:`recent`)."""
        started = time.monotonic()
        try:
            await self._check()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._last = (time.monotonic(), ProbeResult(ServiceState.UNAVAILABLE, reason))
            raise
        result = self._judge(started)
        self._last = (time.monotonic(), result)
        return result

    def recent(self) -> ProbeResult | None:
        """The answer of the last check if it is younger than two intervals."""
        if self._last is None or time.monotonic() - self._last[0] > 2 * self.interval:
            return None
        return self._last[1]


class StaticProbe(TimedProbe):
    """A service whose state is known without asking (e.g. a package that is not installed)."""

    def __init__(self, settings: Settings, service: str, state: ServiceState, reason: str):
        super().__init__(settings)
        self.service = service
        self.result = ProbeResult(state, reason)

    async def check(self) -> ProbeResult:
        """The fixed answer."""
        return self.result


class ChainProbe(TimedProbe):
    """A provider chain as a whole, from its providers' probes: every one unavailable
    makes it unavailable, some make it degraded."""

    def __init__(self, settings: Settings, service: str, members: list[Probe]):
        super().__init__(settings)
        self.service = service
        self.members = members
        self.timeout = max((p.timeout for p in members), default=self.timeout) + 0.5

    async def _one(self, probe: Probe) -> ProbeResult:
        # A store's own probe runs on its schedule: reuse its answer instead of asking the
        # store twice per interval.
        recent = probe.recent() if isinstance(probe, StoreProbe) else None
        if recent is not None:
            return recent
        try:
            return await asyncio.wait_for(probe.check(), probe.timeout)
        except Exception as exc:
            return ProbeResult(ServiceState.UNAVAILABLE, f"{type(exc).__name__}: {exc}")

    async def check(self) -> ProbeResult:
        """Check every member at once."""
        results = await asyncio.gather(*(self._one(p) for p in self.members))
        down = [
            p.service
            for p, r in zip(self.members, results, strict=True)
            if r.state is ServiceState.UNAVAILABLE
        ]
        if self.members and len(down) == len(self.members):
            return ProbeResult(
                ServiceState.UNAVAILABLE, "every provider is unavailable", CircuitState.OPEN
            )
        if down:
            return ProbeResult(ServiceState.DEGRADED, f"unavailable: {', '.join(down)}")
        return ProbeResult(ServiceState.HEALTHY)


def default_probes(settings: Settings, somabrain: Probe | None = None) -> list[Probe]:
    """The probes named in ``settings.health_probes``.

    ``somabrain`` is the SomaBrain probe (``sa01.providers.somabrain_health.SomaBrainProbe``,
    built on the memory client's reading, so that its readings confirm the client's stores);
    required when ``SA01_SOMABRAIN_URL`` is set; without the URL SomaBrain reads
    ``not_configured``.
    """
    factories: dict[str, Callable[[Settings], Probe]] = {
        "postgres": PostgresProbe,
        "redis": RedisProbe,
        "kafka": KafkaProbe,
        "temporal": TemporalProbe,
    }
    if settings.somabrain_url:
        if somabrain is None:
            raise ValueError(
                "SA01_SOMABRAIN_URL is set: pass the SomaBrain probe"
                " (sa01.providers.somabrain_health.SomaBrainProbe)"
            )
        factories["somabrain"] = lambda s: somabrain
    else:
        factories["somabrain"] = lambda s: StaticProbe(
            s,
            "somabrain",
            ServiceState.NOT_CONFIGURED,
            "SA01_SOMABRAIN_URL is not set: memory is off",
        )
    names = [n.strip() for n in settings.health_probes.split(",") if n.strip()]
    unknown = sorted(set(names) - set(factories) - set(CHAIN_PROBES))
    if unknown:
        known = sorted({*factories, *CHAIN_PROBES})
        raise ValueError(f"unknown health probes {unknown}; known: {known}")
    return [factories[name](settings) for name in names if name in factories]


#: Probe names that stand for the provider chains (their probes are built with them).
CHAIN_PROBES = ("storage", "audio")


def probes_enabled(settings: Settings, name: str) -> bool:
    """Whether ``SA01_HEALTH_PROBES`` names ``name``."""
    return name in {n.strip() for n in settings.health_probes.split(",")}
