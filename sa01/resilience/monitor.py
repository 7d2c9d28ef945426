"""The degradation monitor: probes services and emits a DegradationEvent per change.

Every worker runs the probes (its own view feeds its ``/status`` and its journeys);
only the worker for which ``should_publish()`` is true (the Faust leader) emits events,
so a state change yields one event, never one per probe tick or per worker. Events
that cannot be emitted (Kafka and the outbox both down) wait in order and are retried
on the next tick. Dependents of an unavailable service are marked degraded (a
cascade) and counted in ``cascading_failures_total``.

The monitor reads the runtime's breaker registry: each ``unavailable`` verdict on a
service named in ``trips`` opens the breaker registered for it (the resilient
producer's Kafka gate for ``kafka``), so callers stop waiting on a service the probes
already know is down. When the service turns healthy again an open breaker goes
half-open at once instead of sitting out its wait; its own trial call still decides
whether it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime

from sa01.core.errors import InfrastructureUnavailableError
from sa01.core.metrics import Metrics
from sa01.core.redaction import redact_url
from sa01.resilience.circuit_breaker import BreakerState
from sa01.resilience.health import (
    DegradationStatus,
    ServiceHealth,
    ServiceSpec,
    cascade,
    state_value,
)
from sa01.resilience.probes import Probe, ProbeResult
from sa01.resilience.registry import BreakerRegistry
from schemas.headers import MAX_ERROR_TEXT
from schemas.messages import CircuitState, DegradationEvent, ServiceState

__all__ = ["DegradationMonitor"]

logger = logging.getLogger(__name__)

Publisher = Callable[[DegradationEvent], Awaitable[object]]


class DegradationMonitor:
    """Runs probes concurrently and turns state changes into events."""

    def __init__(
        self,
        probes: Iterable[Probe],
        specs: Iterable[ServiceSpec],
        metrics: Metrics,
        *,
        publish: Publisher,
        should_publish: Callable[[], bool] = lambda: True,
        source: str = "monitor",
        slow_observations_to_degrade: int = 3,
        breakers: BreakerRegistry | None = None,
        trips: Mapping[str, str] | None = None,
    ) -> None:
        self.probes = list(probes)
        self.specs = {spec.name: spec for spec in specs}
        self.metrics = metrics
        self.publish = publish
        self.should_publish = should_publish
        self.source = source
        self._observed: dict[str, ServiceHealth] = {}
        self._slow_streak: dict[str, int] = {}
        self.slow_observations_to_degrade = slow_observations_to_degrade
        self._unsent: deque[DegradationEvent] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self.breakers = breakers if breakers is not None else BreakerRegistry()
        self.trips = dict(trips or {})

    # ------------------------------------------------------------------- view
    def seed(self, known: Mapping[str, ServiceHealth]) -> None:
        """Start from states already known (e.g. the service_health table)."""
        for name, health in known.items():
            self._observed.setdefault(name, health)

    def status(self) -> DegradationStatus:
        """This monitor's current view."""
        return DegradationStatus(dict(self._observed), self.specs)

    def observed(self) -> dict[str, ServiceHealth]:
        """Current health per service."""
        return dict(self._observed)

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """One loop per probe, each at its own interval."""
        self._tasks = [
            asyncio.create_task(self._loop(probe), name=f"probe:{probe.service}")
            for probe in self.probes
        ]

    async def stop(self) -> None:
        """Stop probing and close the probes' connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for probe in self.probes:
            with contextlib.suppress(Exception):
                await probe.close()

    async def _loop(self, probe: Probe) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.observe(probe)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("probe loop of %s failed", probe.service)
            await asyncio.sleep(max(0.0, probe.interval - (time.monotonic() - started)))

    # ------------------------------------------------------------ observation
    async def check(self, probe: Probe) -> ProbeResult:
        """Run ``probe`` within its timeout; failures become ``unavailable``."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(probe.timeout):
                result = await probe.check()
        except TimeoutError:
            result = ProbeResult(ServiceState.UNAVAILABLE, f"no answer within {probe.timeout:.1f}s")
        except Exception as exc:
            reason = redact_url(f"{type(exc).__name__}: {exc}".strip())[:500]
            result = ProbeResult(ServiceState.UNAVAILABLE, reason)
        self.metrics.probe_seconds.labels(service=probe.service).observe(time.monotonic() - started)
        return result

    async def observe(self, probe: Probe) -> list[DegradationEvent]:
        """Probe once; record and emit what changed (the service and its dependents)."""
        result = await self.check(probe)
        self._trip(probe.service, result)
        async with self._lock:
            events = []
            event = self._record(probe.service, result, source=self.source)
            if event is not None:
                events.append(event)
                if event.state is ServiceState.HEALTHY:
                    self._retry(probe.service)
            events += self._cascade()
            self._unsent.extend(events)
            await self._flush()
        return events

    def _trip(self, service: str, result: ProbeResult) -> None:
        """An ``unavailable`` verdict opens the breaker registered for ``service``."""
        name = self.trips.get(service)
        if name is None or result.state is not ServiceState.UNAVAILABLE:
            return
        breaker = self.breakers.get(name)
        if breaker is not None:
            breaker.trip(f"health monitor: {service} unavailable ({result.reason})")

    def _retry(self, service: str) -> None:
        """A ``healthy`` verdict after another state: the open breaker tries now."""
        name = self.trips.get(service)
        breaker = None if name is None else self.breakers.get(name)
        if breaker is not None:
            breaker.try_now(f"health monitor: {service} healthy again")

    def _record(self, service: str, result: ProbeResult, *, source: str) -> DegradationEvent | None:
        previous = self._observed.get(service)
        self._update_gauges(service, result.state)
        if previous is not None and previous.state is result.state:
            if (previous.reason, previous.circuit) != (result.reason, result.circuit):
                # Same state, new details (e.g. another provider of a chain is down now):
                # /status shows them; no event, since nothing changed for the agent.
                self._observed[service] = dataclasses.replace(
                    previous,
                    reason=result.reason,
                    circuit=result.circuit,
                    latency_ms=result.latency_ms,
                )
            return None
        now = datetime.now(UTC)
        result = dataclasses.replace(result, reason=result.reason[:MAX_ERROR_TEXT])
        self._observed[service] = ServiceHealth(
            service, result.state, result.circuit, now, result.reason, result.latency_ms, source
        )
        log = logger.warning if result.state is not ServiceState.HEALTHY else logger.info
        log(
            "%s is %s (was %s): %s",
            service,
            result.state.value,
            previous.state.value if previous else "unknown",
            result.reason or "ok",
        )
        return DegradationEvent(
            service=service,
            state=result.state,
            previous_state=previous.state if previous else None,
            circuit=result.circuit,
            reason=result.reason,
            latency_ms=result.latency_ms,
            observed_at=now,
            source=source,
        )

    def _cascade(self) -> list[DegradationEvent]:
        events = []
        down = cascade(self._observed, self.specs.values())
        for name, spec in self.specs.items():
            if not spec.depends_on:
                continue
            dependencies = down.get(name, [])
            if dependencies:
                result = ProbeResult(
                    ServiceState.DEGRADED, "unavailable: " + ", ".join(dependencies)
                )
            else:
                result = ProbeResult(ServiceState.HEALTHY, "dependencies available")
            before = self._observed.get(name)
            event = self._record(name, result, source=f"{self.source}:cascade")
            if event is None:
                continue
            if before is None and result.state is ServiceState.HEALTHY:
                events.append(event)
                continue
            for dependency in dependencies:
                self.metrics.cascading_failures_total.labels(
                    service=name, dependency=dependency
                ).inc()
            events.append(event)
        return events

    def _update_gauges(self, service: str, state: ServiceState) -> None:
        self.metrics.service_health_state.labels(service=service).set(state_value(state))
        spec = self.specs.get(service)
        level = spec.level(state) if spec else 0
        self.metrics.service_degradation_level.labels(service=service).set(int(level))

    async def _flush(self) -> None:
        if not self.should_publish():
            self._unsent.clear()
            return
        while self._unsent:
            event = self._unsent[0]
            try:
                await self.publish(event)
            except InfrastructureUnavailableError as exc:
                logger.warning(
                    "degradation event for %s kept for the next tick: %s", event.service, exc
                )
                return
            self._unsent.popleft()
            self.metrics.degradation_events_total.labels(
                service=event.service, state=event.state.value
            ).inc()

    @staticmethod
    def circuit_of(state: str) -> CircuitState:
        """Map a breaker state name to the contract's circuit field."""
        if state in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
            return CircuitState.OPEN
        if state == BreakerState.HALF_OPEN:
            return CircuitState.HALF_OPEN
        return CircuitState.CLOSED
