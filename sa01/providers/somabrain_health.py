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

**Confirmations are coalesced.** An ack counts as stored only when a reading *started
after it* says the backend is up; a reading started before the ack never vouches for it.
While acks stream in (a backlog draining), at most one ``/health`` read is in flight and
one more is queued: every ack that arrives while a read is in flight joins the queued
read, which starts when the one in flight ends (so after each of its acks). The reads are
thus bounded by time (one after another, back to back) and not by the number of
memories: ``n`` concurrent acks cost at most two reads. Since the vouching read may
start up to one round trip after the ack, a reading *answered* after the ack that says
the backend is down (the one in flight, say) vetoes it: the memory is kept and replayed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sa01.core.settings import Settings
from sa01.resilience.probes import ProbeResult, TimedProbe
from schemas.messages import CircuitState, ServiceState

__all__ = ["MemoryHealthReading", "SomaBrainHealth", "SomaBrainProbe", "read_health_body"]

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


def _hand_over(
    done: asyncio.Task[MemoryHealthReading], waiting: asyncio.Future[MemoryHealthReading]
) -> None:
    """Give the outcome of the read ``done`` to the confirmations waiting on ``waiting``."""
    if waiting.done():
        return
    if done.cancelled():
        waiting.cancel()
    elif (error := done.exception()) is not None:
        waiting.set_exception(error)
    else:
        waiting.set_result(done.result())


#: Readings kept to find the last one started before an ack (:meth:`SomaBrainHealth.confirm`).
RECENT_READINGS = 256


class SomaBrainHealth:
    """Reads SomaBrain's ``/health`` and keeps the latest reading; constructing it does no I/O.

    The health probe and the memory client share one instance: the probe's periodic reading
    serves confirmations, and a confirmation's own reading is the probe's latest too.
    """

    def __init__(self, settings: Settings) -> None:
        self.url = (settings.somabrain_url or "").rstrip("/") + "/health"
        self.timeout = settings.somabrain_health_timeout_seconds
        self._session: aiohttp.ClientSession | None = None
        self.latest: MemoryHealthReading | None = None
        self.reads = 0
        """``/health`` requests sent so far (the probe's and the confirmations')."""
        self._in_flight: tuple[float, asyncio.Task[MemoryHealthReading]] | None = None
        self._next: asyncio.Future[MemoryHealthReading] | None = None
        self._last_down: tuple[float, MemoryHealthReading] | None = None
        self._recent: deque[MemoryHealthReading] = deque(maxlen=RECENT_READINGS)

    async def read(self) -> MemoryHealthReading:
        """Read ``/health`` now; an unreachable or non-200 server reads as backend down.

        Raises only on cancellation: every failure is a reading.
        """
        started = time.monotonic()
        self.reads += 1
        try:
            async with asyncio.timeout(self.timeout), self._client().get(self.url) as response:
                status = response.status
                text = await response.text()
            latency = (time.monotonic() - started) * 1000
            if status != 200:
                reading = MemoryHealthReading(
                    started,
                    ServiceState.UNAVAILABLE,
                    f"/health answered {status}",
                    backend_up=False,
                    latency_ms=latency,
                )
            else:
                body = json.loads(text)
                if not isinstance(body, Mapping):
                    raise ValueError("/health body is not a JSON object")
                reading = read_health_body(body, started, latency)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = f"/health failed: {type(exc).__name__}: {exc}".rstrip(": ")
            if isinstance(exc, TimeoutError):
                reason = f"/health gave no answer within {self.timeout:.1f}s"
            reading = MemoryHealthReading(
                started, ServiceState.UNAVAILABLE, reason, backend_up=False
            )
        return self._keep(reading)

    def _client(self) -> aiohttp.ClientSession:
        """The session of the reads (aiohttp, as remember and recall: a third of httpx's
        CPU per request, and during a drain reads run back to back), opened on first use."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=4),
            )
        return self._session

    def _keep(self, reading: MemoryHealthReading) -> MemoryHealthReading:
        """Note a reading just answered: the latest, and the last that said down."""
        if self.latest is None or reading.started >= self.latest.started:
            self.latest = reading
        if not reading.backend_up:
            self._last_down = (time.monotonic(), reading)
        self._recent.append(reading)
        return reading

    def _vouch(self, reading: MemoryHealthReading, acknowledged_at: float) -> MemoryHealthReading:
        """``reading``, unless the backend read down around the ack: on a reading answered
        after it, or on the last reading started before it.

        The second rule closes the recovery race: a remember acknowledged while the backend
        was down (the memory lost) and a reading taken just after the backend came back
        would otherwise vouch for it. Such a memory is kept and replayed (remember is
        idempotent by key); only a down period that starts and ends between two readings,
        with the ack inside it, stays invisible.
        """
        if not reading.backend_up:
            return reading
        down = self._last_down
        if down is not None and down[0] >= acknowledged_at:
            return down[1]
        before = [r for r in self._recent if r.started < acknowledged_at]
        if before:
            previous = max(before, key=lambda r: r.started)
            if not previous.backend_up:
                return previous
        return reading

    async def confirm(self, acknowledged_at: float) -> MemoryHealthReading:
        """A reading started after ``acknowledged_at`` (a remember's ack) that may vouch for it.

        The latest reading serves when it started after the ack; so does the read in
        flight. Otherwise the ack joins the queued next read, which starts once the read
        in flight ends (see the module docstring). Every waiter shares the reads: one
        waiter's cancellation cancels no read. A reading answered after the ack that says
        the backend is down wins over one that says up (the backend was down at some time
        after the ack, as it may have been when SomaBrain wrote the memory).
        """
        while True:
            latest = self.latest
            if latest is not None and latest.started >= acknowledged_at:
                return self._vouch(latest, acknowledged_at)
            if self._in_flight is not None and self._in_flight[0] >= acknowledged_at:
                reading = await asyncio.shield(self._in_flight[1])
            elif self._in_flight is None:
                reading = await asyncio.shield(self._start_read())
            else:
                if self._next is None:
                    self._next = asyncio.get_running_loop().create_future()
                reading = await asyncio.shield(self._next)
            if reading.started >= acknowledged_at:
                return self._vouch(reading, acknowledged_at)

    def _start_read(self) -> asyncio.Task[MemoryHealthReading]:
        """Start the read every confirmation waiting now (and until it ends) may share."""
        task = asyncio.get_running_loop().create_task(self.read(), name="somabrain-health-read")
        self._in_flight = (time.monotonic(), task)
        task.add_done_callback(self._read_done)
        return task

    def _read_done(self, task: asyncio.Task[MemoryHealthReading]) -> None:
        """The read in flight ended: start the queued one for the acks that joined it."""
        if self._in_flight is not None and self._in_flight[1] is task:
            self._in_flight = None
        queued, self._next = self._next, None
        if queued is not None:
            self._start_read().add_done_callback(lambda done: _hand_over(done, queued))

    async def close(self) -> None:
        """Cancel the read in flight (its waiters are cancelled) and close the HTTP client."""
        if self._in_flight is not None:
            task = self._in_flight[1]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


class SomaBrainProbe(TimedProbe):
    """``GET /health``, judged on the fields that concern memory only.

    The verdict and its reason come from :func:`read_health_body`:
    the memory backend down or not configured, or the embedder or memory pool missing, is
    ``unavailable``; SomaBrain's memory circuit open is ``degraded``; OPA, MinIO, a schema
    registry, ``status`` and ``ready`` are named in the reason but judge nothing. The timeout
    (``somabrain_health_timeout_seconds``) is above SomaBrain's own 3 s per sub-check. The
    reading is shared with the memory client (``health``), which confirms stores with it.
    """

    service = "somabrain"

    def __init__(self, settings: Settings, health: SomaBrainHealth | None = None) -> None:
        super().__init__(settings)
        self.health = health or SomaBrainHealth(settings)
        self.timeout = self.health.timeout + 0.5

    async def check(self) -> ProbeResult:
        """Read ``/health`` once and judge it."""
        reading = await self.health.read()
        if reading.state is ServiceState.HEALTHY and reading.latency_ms is not None:
            if reading.latency_ms > self.slow * 1000:
                reason = f"slow: {reading.latency_ms:.0f} ms; {reading.reason}"
                return ProbeResult(
                    ServiceState.DEGRADED, reason, reading.circuit, reading.latency_ms
                )
        return ProbeResult(reading.state, reading.reason, reading.circuit, reading.latency_ms)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.health.close()
