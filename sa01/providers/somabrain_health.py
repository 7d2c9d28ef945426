"""What SomaBrain's own ``GET /health`` says about its memory, and when to believe an ack.

SomaBrain answers ``POST /memory/remember`` with 200 and ``persisted_to_ltm: true`` even while
its memory backend (SomaFractalMemory) is down: the memory is lost, and only ``GET /health``
tells (``internal_services.soma_fractal_memory`` unhealthy, ``status: critical``). Its
``status`` is also ``critical`` when OPA, MinIO or a schema registry is unreachable, which has
nothing to do with memory. This module reads only the fields that concern memory:

* ``internal_services.soma_fractal_memory``: ``unhealthy`` (the check raised: unreachable,
  timed out) means the backend is **down**; ``details.configured: false`` means SomaBrain has
  **no** backend; ``details.healthy: false`` means its ``/healthz`` answered non-200 (e.g. 503
  without a vector store) while it answers remember and recall: **up**, noted in the reason.
  A body without that check falls back to ``memory_ok``.
* ``memory_circuit_open``: SomaBrain's own breaker; remember is queued in SomaBrain's
  best-effort journal, not stored.

Everything else (``status``, ``ready``, PostgreSQL, Kafka, OPA, MinIO, ...) is ignored and
named in the reason. So are ``embedder_ok`` and ``predictor_ok``: the real server reports
``predictor_ok: false`` while remember and recall work (its health view pings
SomaFractalMemory's ``/healthz`` for it), and a missing embedder shows as 503 on the calls.

:class:`SomaBrainHealth` keeps the latest reading (the probe's, or one made for a
confirmation) so that :meth:`SomaBrainHealth.confirm` can decide whether an acknowledged
remember may count as stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from sa01.core.settings import Settings
from schemas.messages import CircuitState, ServiceState

__all__ = ["MemoryHealthReading", "SomaBrainHealth", "read_health_body"]

_IGNORED_CHECK_PREFIX = ("infrastructure", "internal_services")


@dataclass(frozen=True)
class MemoryHealthReading:
    """One reading of SomaBrain's ``/health``, reduced to what concerns memory.

    ``started`` is the ``time.monotonic()`` at which the request was sent: a reading taken
    after an acknowledgement has ``started`` later than the ack's arrival.
    """

    started: float
    state: ServiceState
    reason: str
    backend_up: bool
    circuit_open: bool = False
    latency_ms: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def circuit(self) -> CircuitState:
        """SomaBrain's memory circuit as a :class:`CircuitState`."""
        return CircuitState.OPEN if self.circuit_open else CircuitState.CLOSED


def _check(body: Mapping[str, Any], group: str, name: str) -> Mapping[str, Any] | None:
    section = body.get(group)
    if not isinstance(section, Mapping):
        return None
    check = section.get(name)
    return check if isinstance(check, Mapping) else None


def _ignored(body: Mapping[str, Any]) -> list[str]:
    """Sub-checks other than the memory backend that are not healthy (named, not judged)."""
    found: list[str] = []
    for group in _IGNORED_CHECK_PREFIX:
        section = body.get(group)
        if not isinstance(section, Mapping):
            continue
        for name, check in section.items():
            if name == "soma_fractal_memory" or not isinstance(check, Mapping):
                continue
            status = str(check.get("status", ""))
            unused = status == "degraded" and not check.get("details")  # e.g. Milvus, OAK off
            if status and status != "healthy" and not unused:
                found.append(f"{name} {status}")
    return found


def _backend(body: Mapping[str, Any]) -> tuple[bool, str, list[str]]:
    """(backend up, why not, notes) from the SomaFractalMemory sub-check or ``memory_ok``."""
    check = _check(body, "internal_services", "soma_fractal_memory")
    if check is None:
        if body.get("memory_ok") is False:
            return False, "memory backend down (memory_ok false)", []
        return True, "", []
    status = str(check.get("status", ""))
    details = check.get("details")
    details = details if isinstance(details, Mapping) else {}
    if status == "unhealthy":
        error = str(check.get("error") or "no error given")
        return False, f"memory backend down (soma_fractal_memory unhealthy: {error})", []
    if details.get("configured") is False:
        return False, "memory backend not configured in SomaBrain", []
    if status != "healthy":
        return False, f"memory backend {status or 'unknown'}", []
    if details.get("healthy") is False:
        note = "soma_fractal_memory /healthz not 200 (no vector store?): remember and recall work"
        return True, "", [note]
    return True, "", []


def read_health_body(
    body: Mapping[str, Any], started: float, latency_ms: float | None = None
) -> MemoryHealthReading:
    """The verdict of one ``/health`` body (see the module docstring for the rules)."""
    backend_up, down_reason, notes = _backend(body)
    circuit_open = bool(body.get("memory_circuit_open"))
    ignored = _ignored(body)
    status = body.get("status")
    if status not in (None, "healthy"):
        ignored.append(f"status {status}")
    if body.get("ready") is False:
        ignored.append("ready false")
    ignored += [
        f"{name} false" for name in ("embedder_ok", "predictor_ok") if body.get(name) is False
    ]
    if ignored:
        notes.append("ignored (not memory): " + ", ".join(ignored))
    if not backend_up:
        state, reason = ServiceState.UNAVAILABLE, down_reason
    elif circuit_open:
        state, reason = ServiceState.DEGRADED, "memory circuit open: remember is only queued"
    else:
        state, reason = ServiceState.HEALTHY, "memory backend up"
    full = "; ".join([reason, *notes])
    return MemoryHealthReading(
        started=started,
        state=state,
        reason=full,
        backend_up=backend_up and not circuit_open,
        circuit_open=circuit_open,
        latency_ms=latency_ms,
        notes=tuple(notes),
    )


class SomaBrainHealth:
    """Reads SomaBrain's ``/health`` and keeps the latest reading; constructing it does no I/O.

    The health probe and the memory client share one instance: the probe's periodic reading
    serves confirmations, and a confirmation's own reading is the probe's latest too.
    """

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.url = (settings.somabrain_url or "").rstrip("/") + "/health"
        self.timeout = settings.somabrain_health_timeout_seconds
        self.client = client or httpx.AsyncClient(timeout=self.timeout)
        self.latest: MemoryHealthReading | None = None
        self._in_flight: tuple[float, asyncio.Future[MemoryHealthReading]] | None = None

    async def read(self) -> MemoryHealthReading:
        """Read ``/health`` now; an unreachable or non-200 server reads as backend down.

        Raises only on cancellation: every failure is a reading.
        """
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.client.get(self.url)
            latency = (time.monotonic() - started) * 1000
            if response.status_code != 200:
                reading = MemoryHealthReading(
                    started,
                    ServiceState.UNAVAILABLE,
                    f"/health answered {response.status_code}",
                    backend_up=False,
                    latency_ms=latency,
                )
            else:
                body = response.json()
                if not isinstance(body, Mapping):
                    raise ValueError("/health body is not a JSON object")
                reading = read_health_body(body, started, latency)
        except (httpx.HTTPError, TimeoutError, ValueError) as exc:
            reason = f"/health failed: {type(exc).__name__}: {exc}".rstrip(": ")
            if isinstance(exc, TimeoutError):
                reason = f"/health gave no answer within {self.timeout:.1f}s"
            reading = MemoryHealthReading(
                started, ServiceState.UNAVAILABLE, reason, backend_up=False
            )
        if self.latest is None or reading.started >= self.latest.started:
            self.latest = reading
        return reading

    async def confirm(self, acknowledged_at: float) -> MemoryHealthReading:
        """A reading that may vouch for a remember acknowledged at ``acknowledged_at``.

        The latest reading (the probe's or another confirmation's) serves when it was taken
        after the ack; otherwise ``/health`` is read now. Confirmations waiting at the same
        time share one request (single flight), started after every one of their acks.
        """
        latest = self.latest
        if latest is not None and latest.started >= acknowledged_at:
            return latest
        if self._in_flight is None or self._in_flight[0] < acknowledged_at:
            self._in_flight = (time.monotonic(), asyncio.ensure_future(self.read()))
        return await asyncio.shield(self._in_flight[1])

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()
