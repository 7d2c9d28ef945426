"""A controllable fake SomaBrain memory service speaking its real HTTP API.

The real service is ``somatechlat/somabrain`` (Django Ninja); the API this fake speaks, and where
it was read from, is written down in ``docs/somabrain-api.md``. Like :mod:`loopback.llm_server`,
the server runs an aiohttp application on its own event loop in a background thread and is
switched into a :class:`~loopback.llm_server.FailureMode` at run time.

Endpoints (``/api/...`` aliases exist for the memory routes, as in the real service):

* ``POST /memory/remember``: stores ``value`` under ``(tenant, namespace, key)``; the key is the
  idempotency key, so a replayed remember is stored once (the last write wins, in place). The
  text indexed is ``value.text`` (else the key), as in the real server. Every answered
  remember also enters the tenant's working memory.
* ``POST /memory/recall``: the tenant comes from ``X-Tenant-ID`` (default ``standalone``), the
  namespace from the body, else ``X-Namespace``, else ``"default"``; long-term hits of another
  namespace or tenant are dropped; working-memory items of the tenant (every namespace, whatever
  the query) come at score 1.0 with layer ``"wm"``; all sorted by score, cut at ``top_k``.
* ``GET /health`` (also ``/health/``): always 200; the real view's checks and derived fields
  reflect the mode, :meth:`SomaBrainServer.set_backend_down` and
  :meth:`SomaBrainServer.set_health_faults`.
* ``GET /healthz``: liveness, always 200 while the port is open (HANG and SLOW do not touch it).
* ``GET /_loopback/mode``, ``POST /_loopback/mode``: control endpoints for out-of-process use
  (``python -m loopback.somabrain_server``).

Modes: OK; ERROR_500 (the memory routes answer 500, ``/health`` reports ``critical`` and not
ready, as the real service does when its memory backend is down); HANG (memory routes and
``/health`` never answer until the mode changes); SLOW (they answer after ``delay_seconds``);
REFUSE (the port is closed; any other mode re-opens the same port); BAD_REQUEST (remember
answers 400 ``{"detail": ...}``, as for a payload the server rejects). Independently,
:meth:`SomaBrainServer.set_backend_down` plays the real server with its memory backend stopped
(remember answers 200 ``persisted_to_ltm: true`` and loses the memory; only ``/health`` says
``critical``), and
:meth:`SomaBrainServer.set_queue_for_replay` opens the memory circuit: remember answers 200 with
the ``memory-backend-unavailable:queued-for-replay`` warning and keeps the memory in a replay
queue, which is replayed into the store when the circuit closes again.

Run one in the foreground with ``python -m loopback.somabrain_server --port 9696``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import gc
import hashlib
import heapq
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Final, TypeVar

import pydantic
from aiohttp import web
from pydantic import BaseModel, Field

from loopback._server import (
    DEFAULT_HOST,
    FailureMode,
    LoopbackServer,
    RecordedRequest,
    add_mode_arguments,
    cli_parser,
    drop,
    parse_cli_args,
    revert_after_of,
    serve_until_signalled,
)

logger = logging.getLogger(__name__)

__all__ = [
    "QUEUED_FOR_REPLAY_WARNING",
    "SUPPORTED_MODES",
    "SomaBrainServer",
    "StoredMemory",
]

QUEUED_FOR_REPLAY_WARNING: Final = "memory-backend-unavailable:queued-for-replay"
"""The warning the real ``/memory/remember`` returns while its memory circuit is open."""

SUPPORTED_MODES: Final = frozenset(
    {
        FailureMode.OK,
        FailureMode.ERROR_500,
        FailureMode.HANG,
        FailureMode.SLOW,
        FailureMode.REFUSE,
        FailureMode.BAD_REQUEST,
    }
)
"""The failure modes this server implements (the others are LLM-specific)."""

_DEFAULT_TENANT: Final = "standalone"
_DEFAULT_NAMESPACE: Final = "default"
_CIRCUIT_OPEN_MESSAGE: Final = "Memory service unavailable (circuit open)"
_BACKEND_ERROR: Final = "memory backend error: 500"
_WORD: Final = re.compile(r"\w+")
_M = TypeVar("_M", bound=BaseModel)


# ---------------------------------------------------------------------- request models
# The shapes of the real request bodies (somabrain/api/memory/models.py and the RecallRequest in
# somabrain/api/endpoints/memory.py); validating with pydantic gives the real 422 error items.


class _Attachment(BaseModel):
    kind: str
    uri: str | None = None
    content_type: str | None = None
    checksum: str | None = None
    data: str | None = None
    meta: dict[str, Any] | None = None


class _Link(BaseModel):
    rel: str
    target: str
    weight: float | None = Field(None, ge=0.0)
    meta: dict[str, Any] | None = None


class _Signals(BaseModel):
    importance: float | None = Field(None, ge=0.0)
    novelty: float | None = Field(None, ge=0.0)
    ttl_seconds: int | None = Field(None, ge=0)
    reinforcement: str | None = None
    recall_bias: str | None = None


class _WriteRequest(BaseModel):
    tenant: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    key: str = Field(min_length=1)
    value: dict[str, Any]
    meta: dict[str, Any] | None = None
    universe: str | None = None
    ttl_seconds: int | None = Field(None, ge=0)
    tags: list[str] = Field(default_factory=list)
    policy_tags: list[str] = Field(default_factory=list)
    attachments: list[_Attachment] = Field(default_factory=list)
    links: list[_Link] = Field(default_factory=list)
    signals: _Signals | None = None
    importance: float | None = Field(None, ge=0.0)
    novelty: float | None = Field(None, ge=0.0)
    trace_id: str | None = None


class _RecallRequest(BaseModel):
    query: str
    top_k: int = 10
    layer: str = "both"
    tenant: str | None = None
    namespace: str | None = None
    universe: str | None = None


# ---------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, slots=True)
class StoredMemory:
    """One memory as the server holds it (one per ``(tenant, namespace, key)``)."""

    tenant: str
    namespace: str
    key: str
    value: dict[str, Any]
    """The ``value`` of the remember request, as sent."""
    meta: dict[str, Any] | None
    tags: list[str]
    policy_tags: list[str]
    universe: str | None
    trace_id: str | None
    request_id: str
    """``X-Request-ID`` of the request that wrote it (a fresh UUID when absent)."""
    payload: dict[str, Any]
    """The stored payload (``value`` plus tenant, namespace, key, tags, ...), returned by recall."""
    coordinate: list[float]
    """The coordinate derived from ``key`` (and ``universe``)."""
    stored_at: float
    """``time.time()`` of the last write."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Settings:
    mode: FailureMode = FailureMode.OK
    delay_seconds: float = 0.0

    def __str__(self) -> str:
        return f"mode={self.mode} delay={self.delay_seconds}s"


class _BadRequest(Exception):
    """An answer other than 200, raised while reading a request."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class SomaBrainServer(LoopbackServer[_Settings]):
    """A fake SomaBrain HTTP server on a background thread with switchable failures.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with SomaBrainServer(token="secret") as brain:
            brain.set_mode(FailureMode.ERROR_500)
            ...  # point clients at brain.base_url

    :attr:`base_url` is the value for ``SA01_SOMABRAIN_URL``. Stored memories, the replay queue
    and the request log survive a :meth:`stop` and a restart.
    """

    _title: ClassVar[str] = "SomaBrainServer"
    _label: ClassVar[str] = "SomaBrain server"
    _logger: ClassVar[logging.Logger] = logger
    _client_max_size: ClassVar[int] = 16 * 1024 * 1024

    def __init__(
        self,
        port: int = 0,
        name: str = "somabrain",
        *,
        host: str = DEFAULT_HOST,
        token: str | None = None,
    ) -> None:
        """Create a stopped server; ``port=0`` picks a free port on :meth:`start`.

        With ``token`` the memory routes require ``Authorization: Bearer <token>`` and answer
        401 ``{"detail": "Unauthorized"}`` otherwise; ``/health`` and ``/healthz`` never do.
        """
        super().__init__(port, name, host=host, default_settings=_Settings())
        if token is not None and not token.strip():
            raise ValueError("token must not be blank")
        self._token: Final = token
        # State shared with callers on other threads, guarded by _lock.
        self._queue_for_replay = False
        self._store: dict[tuple[str, str, str], StoredMemory] = {}
        # Indexes of _store, so that a recall and a count cost what they return rather than
        # the whole store (a scan per recall made this server the bottleneck of the memory
        # backlog bench): first-insertion position, memories by the owner recall matches
        # (see _owner) and counts by tenant.
        self._position: dict[tuple[str, str, str], int] = {}
        self._by_owner: dict[_Owner, dict[tuple[str, str, str], _Indexed]] = {}
        self._tenant_counts: Counter[str] = Counter()
        self._unfrozen = 0
        self._queued: list[StoredMemory] = []
        self._working: dict[str, dict[str, dict[str, Any]]] = {}
        self._backend_down = False
        self._sfm_without_vector_store = False
        self._unhealthy_checks: frozenset[str] = frozenset()
        self._remember_count = 0

    # ------------------------------------------------------------------ public API

    @property
    def token(self) -> str | None:
        """The bearer token the memory routes require, or None when they require none."""
        return self._token

    @property
    def delay_seconds(self) -> float:
        """The SLOW delay in force."""
        return self._current().delay_seconds

    def set_mode(
        self,
        mode: FailureMode,
        *,
        delay_seconds: float = 0.0,
        revert_after_seconds: float | None = None,
    ) -> None:
        """Switch the failure mode (thread-safe); in effect when this returns.

        ``delay_seconds`` applies to SLOW. With ``revert_after_seconds`` the server goes back to
        OK on its own after that long. Requests hanging in HANG are answered according to the
        new mode. Raises ValueError for a mode outside :data:`SUPPORTED_MODES`.
        """
        settings = _Settings(FailureMode(mode), float(delay_seconds))
        if settings.mode not in SUPPORTED_MODES:
            raise ValueError(f"SomaBrainServer does not implement {settings.mode}")
        if settings.delay_seconds < 0:
            raise ValueError("delay_seconds must not be negative")
        self._change_mode(settings, revert_after_seconds)

    @property
    def queue_for_replay(self) -> bool:
        """True while the memory circuit is open (remember queues for replay)."""
        with self._lock:
            return self._queue_for_replay

    def set_queue_for_replay(self, enabled: bool) -> None:
        """Open (True) or close (False) the memory circuit (thread-safe).

        While open, remember answers 200 with :data:`QUEUED_FOR_REPLAY_WARNING` and
        ``persisted_to_ltm: false`` and keeps the memory in :meth:`queued`; recall answers
        ``degraded`` from working memory (``layer: "ltm"`` gets 503); ``/health`` reports
        ``memory_circuit_open: true`` and ``ready: false``. Closing the circuit replays the
        queue into the store, idempotently by key.
        """
        with self._lock:
            self._queue_for_replay = bool(enabled)
            if enabled:
                return
            replayed, self._queued = self._queued, []
            for memory in replayed:
                self._put(memory)
        if replayed:
            logger.info("SomaBrain server %r replayed %d memories", self._name, len(replayed))

    @property
    def backend_down(self) -> bool:
        """True while the memory backend is down (see :meth:`set_backend_down`)."""
        with self._lock:
            return self._backend_down

    def set_backend_down(self, down: bool) -> None:
        """Take the memory backend (SomaFractalMemory) away (True) or give it back (False).

        As observed on the real server with its backend stopped: remember still answers 200
        ``persisted_to_ltm: true`` with no warning, admits the memory to working memory and
        stores nothing (the memory is lost); recall answers 200 ``degraded: false`` with no
        long-term hits; ``/health`` says ``status: critical`` with ``soma_fractal_memory``
        unhealthy and ``memory_ok``/``ready`` false, the memory circuit closed.
        """
        with self._lock:
            self._backend_down = bool(down)

    def set_health_faults(
        self, *, unhealthy: set[str] | frozenset[str] = frozenset(), no_vector_store: bool = False
    ) -> None:
        """Shape ``/health`` without touching the memory routes.

        ``unhealthy`` names infrastructure checks to report unhealthy (``opa``, ``minio``,
        ``schema_registry``, ``kafka``, ``postgresql``, ``redis``, ``keycloak``, ``lago``):
        the real server then says ``status: critical``. ``no_vector_store`` makes
        SomaFractalMemory's ``/healthz`` answer 503 as it does without a vector store: the
        sub-check stays ``healthy`` with ``details.healthy: false`` while remember and recall
        work.
        """
        with self._lock:
            self._unhealthy_checks = frozenset(unhealthy)
            self._sfm_without_vector_store = bool(no_vector_store)

    def working_memory(self, tenant: str) -> list[dict[str, Any]]:
        """The working-memory items (stored payloads) of ``tenant``, oldest first."""
        with self._lock:
            return [copy.deepcopy(p) for p in self._working.get(tenant, {}).values()]

    def clear_working_memory(self) -> None:
        """Forget the working memory only, as a restart of the real server does."""
        with self._lock:
            self._working.clear()

    def memories(self, tenant: str | None = None) -> list[StoredMemory]:
        """The stored memories (of ``tenant`` when given), in first-insertion order."""
        with self._lock:
            return [m for m in self._store.values() if tenant is None or m.tenant == tenant]

    def queued(self, tenant: str | None = None) -> list[StoredMemory]:
        """Memories remembered while the circuit was open and not yet replayed, oldest first."""
        with self._lock:
            return [m for m in self._queued if tenant is None or m.tenant == tenant]

    def clear_memories(self) -> None:
        """Forget the stored and queued memories and the working memory."""
        with self._lock:
            self._store.clear()
            self._position.clear()
            self._by_owner.clear()
            self._tenant_counts.clear()
            self._queued.clear()
            self._working.clear()

    @property
    def remember_count(self) -> int:
        """How many ``POST /memory/remember`` requests arrived, duplicates and failures included."""
        with self._lock:
            return self._remember_count

    def reset_requests(self) -> None:
        """Forget the recorded requests and reset :attr:`remember_count`."""
        with self._lock:
            self._requests.clear()
            self._remember_count = 0

    # ------------------------------------------------------------------ mode handling

    async def _settle(self) -> _Settings | None:
        """Wait out HANG and SLOW; None when the request must be dropped."""
        settings = await super()._settle()
        if settings is None or settings.mode is FailureMode.REFUSE:
            return None
        if settings.mode is FailureMode.SLOW and await self._sleep(settings.delay_seconds):
            return None
        return settings

    # ------------------------------------------------------------------ store

    def _put(self, memory: StoredMemory) -> None:
        """Insert or overwrite in place (caller holds the lock)."""
        ident = (memory.tenant, memory.namespace, memory.key)
        previous = self._store.get(ident)
        if previous is None:
            self._position[ident] = len(self._position)
            self._tenant_counts[memory.tenant] += 1
            self._unfrozen += 1
            if self._unfrozen >= FREEZE_EVERY:
                # The real service keeps memories in its store, this one in the Python heap,
                # where every full collection walked all of them: pauses of 0.1-0.5 s at
                # 50,000 memories stalled every request, recalls included. Frozen objects
                # are left out of collections (the store only grows, or is cleared).
                gc.freeze()
                self._unfrozen = 0
        else:
            self._by_owner.get(_owner(previous.payload), {}).pop(ident, None)
        self._store[ident] = memory
        self._by_owner.setdefault(_owner(memory.payload), {})[ident] = (
            self._position[ident],
            _indexed_words(memory),
            memory,
        )

    def _search(
        self, tenant: str, namespace: str, query: str, top_k: int
    ) -> tuple[int, list[tuple[float, StoredMemory]]]:
        """How many long-term memories score above 0, and the ``top_k`` best.

        Only memories the real ``_tenant_match`` keeps are scored: the stored payload names
        this tenant or none, and this namespace or none (:func:`_owner`). The score is the
        share of the query's words found in the indexed text (:func:`_indexed_words`); equal
        scores keep first-insertion order.
        """
        words = frozenset(_WORD.findall(query.lower()))
        if not words:
            return 0, []
        with self._lock:
            buckets = [
                list(self._by_owner.get(owner, {}).values())
                for owner in {(tenant, namespace), (tenant, ""), ("", namespace), ("", "")}
            ]
        hits = [
            (-found, position, memory)
            for bucket in buckets
            for position, indexed, memory in bucket
            if (found := len(words & indexed))
        ]
        best = heapq.nsmallest(top_k, hits)
        return len(hits), [(round(-found / len(words), 6), memory) for found, _, memory in best]

    # ------------------------------------------------------------------ HTTP

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        for prefix in ("", "/api"):
            router.add_post(f"{prefix}/memory/remember", self._handle_remember)
            router.add_post(f"{prefix}/memory/recall", self._handle_recall)
        router.add_get("/health", self._handle_health)
        router.add_get("/health/", self._handle_health)
        router.add_get("/healthz", self._handle_healthz)

    def _on_record(self, record: RecordedRequest) -> None:
        if record.path.endswith("/memory/remember"):
            self._remember_count += 1

    def _auth_failure(self, request: web.Request) -> web.Response | None:
        """None when authorized; else the real server's 401.

        Django Ninja accepts the scheme in any case and checks the token (401
        ``Unauthorized``); SomaBrain's own ``require_auth`` then wants exactly ``Bearer``
        (401 ``missing bearer token``), as observed.
        """
        if self._token is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token != self._token:
            return _unauthorized()
        if scheme != "Bearer":
            return _detail(401, "missing bearer token")
        return None

    async def _admit(self, request: web.Request) -> _Settings | web.Response:
        """Wait out the mode and check the token of a memory request; or the answer to give."""
        settings = await self._settle()
        if settings is None:
            return drop(request)
        return self._auth_failure(request) or settings

    async def _handle_remember(self, request: web.Request) -> web.Response:
        raw, _ = await self._receive(request)
        settings = await self._admit(request)
        if isinstance(settings, web.Response):
            return settings
        try:
            payload = _validate(_WriteRequest, raw)
        except _BadRequest as exc:
            return exc.response
        request_id = request.headers.get("X-Request-ID") or str(uuid.uuid4())
        actor = request.headers.get("X-Actor") or "memory-api"
        memory, signal_data = _compose(payload, request_id, actor)
        with self._lock:
            queued = self._queue_for_replay
            if queued:
                self._queued.append(memory)
        if not queued and settings.mode is FailureMode.ERROR_500:
            return _detail(500, f"store failed: {_BACKEND_ERROR}")
        if settings.mode is FailureMode.BAD_REQUEST:
            return _detail(400, "invalid memory payload")
        with self._lock:
            if not queued and not self._backend_down:
                self._put(memory)
            # Working memory admits every answered remember (the real one does, in-process).
            self._working.setdefault(payload.tenant, {})[payload.key] = copy.deepcopy(
                memory.payload
            )
        feedback = {
            "importance": signal_data.get("importance"),
            "novelty": signal_data.get("novelty"),
            "ttl_seconds": signal_data.get("ttl_seconds"),
            "reinforcement": signal_data.get("reinforcement"),
            "recall_bias": signal_data.get("recall_bias"),
            "promoted_to_wm": True,
            "persisted_to_ltm": not queued,
        }
        return web.json_response(
            {
                "ok": True,
                "tenant": payload.tenant,
                "namespace": payload.namespace,
                "key": payload.key,
                "coordinate": None if queued else memory.coordinate,
                "promoted_to_wm": True,
                "persisted_to_ltm": not queued,
                "queued_for_ltm": False,
                "deduplicated": False,
                "importance": feedback["importance"],
                "novelty": feedback["novelty"],
                "ttl_applied": feedback["ttl_seconds"],
                "trace_id": payload.trace_id,
                "request_id": request_id,
                "warnings": [QUEUED_FOR_REPLAY_WARNING] if queued else [],
                "signals": feedback,
            }
        )

    async def _handle_recall(self, request: web.Request) -> web.Response:
        """As the real ``recall_memory``: long-term hits of the namespace, then working memory.

        The namespace is the body's, else ``X-Namespace``, else ``"default"``; long-term hits
        whose stored tenant or namespace differ are dropped. Working memory returns the
        tenant's items (every namespace, oldest first, whatever the query) at score 1.0. The
        two lists are sorted together by score and cut at ``top_k``.
        """
        raw, _ = await self._receive(request)
        started = time.perf_counter()
        settings = await self._admit(request)
        if isinstance(settings, web.Response):
            return settings
        try:
            payload = _validate(_RecallRequest, raw)
        except _BadRequest as exc:
            return exc.response
        tenant = request.headers.get("X-Tenant-ID") or _DEFAULT_TENANT
        namespace = payload.namespace or request.headers.get("X-Namespace") or _DEFAULT_NAMESPACE
        top_k = max(1, payload.top_k)
        layer = payload.layer or "both"
        with self._lock:
            circuit_open = self._queue_for_replay
            backend_down = self._backend_down
            items = list(self._working.get(tenant, {}).values())
            # Only what is returned is copied: a tenant's working memory grows with every
            # remember, and copying all of it per recall made the server the bottleneck of
            # the memory backlog bench.
            wm_count = len(items)
            working = [copy.deepcopy(p) for p in items[:top_k]] if layer in ("wm", "both") else []
        degraded_reasons: list[str] = []
        results: list[dict[str, Any]] = []
        ltm_hits = 0
        if layer in ("ltm", "both"):
            if circuit_open:
                if layer == "ltm":
                    return _detail(503, _CIRCUIT_OPEN_MESSAGE)
                degraded_reasons.append(f"ltm: {_CIRCUIT_OPEN_MESSAGE}")
            elif settings.mode is FailureMode.ERROR_500:
                return _detail(500, f"ltm recall unavailable: {_BACKEND_ERROR}")
            elif not backend_down:
                ltm_hits, hits = self._search(tenant, namespace, payload.query, top_k)
                for score, memory in hits:
                    results.append(
                        {
                            "content": copy.deepcopy(memory.payload),
                            "layer": "ltm",
                            "score": score,
                            "coordinate": list(memory.coordinate),
                        }
                    )
        wm_hits = 0
        if layer in ("wm", "both"):
            wm_hits = wm_count
            results += [{"content": item, "layer": "wm", "score": 1.0} for item in working[:top_k]]
        results.sort(key=lambda result: float(result["score"]), reverse=True)
        results = results[:top_k]
        return web.json_response(
            {
                "tenant": tenant,
                "namespace": namespace,
                "results": results,
                "wm_hits": wm_hits,
                "ltm_hits": ltm_hits,
                "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
                "total_results": len(results),
                "degraded": bool(degraded_reasons),
                "degraded_reasons": degraded_reasons,
            }
        )

    async def _handle_health(self, request: web.Request) -> web.Response:
        await self._receive(request)
        settings = await self._settle()
        if settings is None:
            return drop(request)
        with self._lock:
            backend_down = self._backend_down
            circuit_open = self._queue_for_replay
            unhealthy = self._unhealthy_checks
            no_vector_store = self._sfm_without_vector_store
        return web.json_response(
            _health_body(
                backend_down=settings.mode is FailureMode.ERROR_500 or backend_down,
                circuit_open=circuit_open,
                trace_id=request.headers.get("X-Request-ID"),
                unhealthy=unhealthy,
                no_vector_store=no_vector_store,
            )
        )

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        await self._receive(request)
        return web.json_response({"status": "healthy", "timestamp": _now_iso()})

    async def _read_mode_request(self, request: web.Request) -> tuple[_Settings, float | None]:
        """Also opens or closes the memory circuit when the body has ``queue_for_replay``."""
        body = json.loads(await request.read())
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        settings = self._current()
        if "mode" in body:
            settings = _Settings(FailureMode(body["mode"]), float(body.get("delay_seconds", 0.0)))
        revert_after = revert_after_of(body)
        queue = body.get("queue_for_replay")
        if settings.mode not in SUPPORTED_MODES:
            raise ValueError(f"unsupported mode {settings.mode}")
        if min(settings.delay_seconds, revert_after or 0.0) < 0:
            raise ValueError("durations must not be negative")
        if queue is not None and not isinstance(queue, bool):
            raise ValueError("queue_for_replay must be a boolean")
        backend_down = body.get("backend_down")
        if backend_down is not None and not isinstance(backend_down, bool):
            raise ValueError("backend_down must be a boolean")
        if queue is not None:
            self.set_queue_for_replay(queue)
        if backend_down is not None:
            self.set_backend_down(backend_down)
        return settings, revert_after

    def _describe(self) -> dict[str, Any]:
        settings = self._current()
        with self._lock:
            return {
                "name": self._name,
                "mode": settings.mode.value,
                "delay_seconds": settings.delay_seconds,
                "queue_for_replay": self._queue_for_replay,
                "backend_down": self._backend_down,
                "memories": len(self._store),
                "memories_by_tenant": {t: n for t, n in self._tenant_counts.items() if n},
                "queued": len(self._queued),
                "remember_count": self._remember_count,
                "request_count": len(self._requests),
            }


# ---------------------------------------------------------------------- helpers


def _validate(model: type[_M], raw: bytes) -> _M:
    """Parse and validate a body like Django Ninja does for a body parameter named payload."""
    data: Any = None
    if raw:
        try:
            data = json.loads(raw)
        except ValueError:
            raise _BadRequest(_detail(400, "Cannot parse request body")) from None
    if data is None:
        missing = {"type": "missing", "loc": ["body", "payload"], "msg": "Field required"}
        raise _BadRequest(_detail(422, [missing]))
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _BadRequest(_detail(422, _ninja_errors(exc))) from None


def _ninja_errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False, include_input=False):
        item: dict[str, Any] = dict(error)
        item["loc"] = ["body", "payload", *error["loc"]]
        ctx = item.get("ctx")
        if isinstance(ctx, dict):
            item["ctx"] = {k: str(v) if isinstance(v, Exception) else v for k, v in ctx.items()}
        errors.append(item)
    return errors


def _compose(
    payload: _WriteRequest, request_id: str, actor: str
) -> tuple[StoredMemory, dict[str, Any]]:
    """Build the stored payload the way the real service describes it."""
    stored: dict[str, Any] = copy.deepcopy(payload.value)
    stored.setdefault("task", stored.get("text") or payload.key)
    for field, default in (
        ("tenant_id", payload.tenant),
        ("namespace", payload.namespace),
        ("tenant", payload.tenant),
        ("key", payload.key),
        ("memory_type", "episodic"),
    ):
        stored.setdefault(field, default)
    if payload.meta:
        existing = stored.get("meta")
        merged = dict(existing) if isinstance(existing, dict) else {}
        merged.update(copy.deepcopy(payload.meta))
        stored["meta"] = merged
    stored["tags"] = list(dict.fromkeys(payload.tags))
    stored["policy_tags"] = list(dict.fromkeys(payload.policy_tags))
    if payload.attachments:
        stored["attachments"] = [a.model_dump(exclude_none=True) for a in payload.attachments]
    if payload.links:
        stored["links"] = [link.model_dump(exclude_none=True) for link in payload.links]
    if payload.universe:
        stored["universe"] = payload.universe
    else:
        stored.setdefault("universe", "real")
    stored.setdefault("_actor", actor)
    if payload.trace_id:
        stored["trace_id"] = payload.trace_id
    signal_data: dict[str, Any] = {}
    if payload.signals is not None:
        signal_data.update(payload.signals.model_dump(exclude_none=True))
    if payload.importance is not None:
        signal_data["importance"] = payload.importance
    if payload.novelty is not None:
        signal_data["novelty"] = payload.novelty
    if payload.ttl_seconds is not None:
        stored["ttl_seconds"] = payload.ttl_seconds
        signal_data.setdefault("ttl_seconds", payload.ttl_seconds)
    if signal_data:
        stored["signals"] = dict(signal_data)
    coordinate = _coordinate(payload.key, payload.universe)
    stored["coordinate"] = list(coordinate)
    memory = StoredMemory(
        tenant=payload.tenant,
        namespace=payload.namespace,
        key=payload.key,
        value=copy.deepcopy(payload.value),
        meta=copy.deepcopy(payload.meta),
        tags=list(payload.tags),
        policy_tags=list(payload.policy_tags),
        universe=payload.universe,
        trace_id=payload.trace_id,
        request_id=request_id,
        payload=stored,
        coordinate=coordinate,
        stored_at=time.time(),
    )
    return memory, signal_data


def _coordinate(key: str, universe: str | None) -> list[float]:
    """A stable 3-D coordinate in [-1, 1) derived from the key, like the real key->coord map."""
    digest = hashlib.sha256(f"{universe or 'real'}:{key}".encode()).digest()
    return [round(int.from_bytes(digest[i : i + 8], "big") / 2**63 - 1.0, 6) for i in (0, 8, 16)]


#: New memories between two ``gc.freeze()`` calls (see ``SomaBrainServer._put``).
FREEZE_EVERY = 1000

#: A memory as the recall index holds it: first-insertion position, indexed words, memory.
_Indexed = tuple[int, frozenset[str], "StoredMemory"]

#: Whom a stored memory answers recalls for: (tenant, namespace), "" for either when the
#: stored payload names none, ``None`` when it names a value no recall can match.
_Owner = tuple[str, str] | None


def _owner(payload: dict[str, Any]) -> _Owner:
    """The real ``_tenant_match`` as an index key: a hit of another tenant or namespace is
    dropped, and a payload naming neither matches every recall."""
    owner = payload.get("tenant") or payload.get("tenant_id") or ""
    namespace = payload.get("namespace") or ""
    if not isinstance(owner, str) or not isinstance(namespace, str):
        return None
    return owner, namespace


def _indexed_words(memory: StoredMemory) -> frozenset[str]:
    """The words a memory is found by.

    The real server embeds only the stored ``task`` (``value.text``, else the key): a memory
    whose content sits elsewhere in ``value`` is found by its key alone.
    """
    return frozenset(_WORD.findall(str(memory.payload.get("task") or memory.key).lower()))


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _check(name: str, ok: bool, details: dict[str, Any] | None) -> dict[str, Any]:
    """One ``timed_check`` result: ``healthy`` with a truthy result, ``degraded`` with none."""
    if not ok:
        return {
            "name": name,
            "status": "unhealthy",
            "response_time_ms": 1,
            "error": "ConnectError: [Errno 111] Connection refused",
        }
    status = "healthy" if details else "degraded"
    return {"name": name, "status": status, "response_time_ms": 1, "details": details}


_INFRASTRUCTURE: Final = (
    ("postgresql", "PostgreSQL", {"version": "PostgreSQL 16"}),
    ("redis", "Redis", {"connected": True}),
    ("kafka", "Kafka", {"broker": "127.0.0.1:9094", "connected": True}),
    ("milvus", "Milvus", None),
    ("opa", "OPA", {"healthy": True}),
    ("minio", "MinIO", {"healthy": True}),
    ("schema_registry", "Schema Registry", {"healthy": True, "subjects": 0}),
    ("keycloak", "Keycloak", {"configured": False}),
    ("lago", "Lago", {"configured": False, "mode": "standalone"}),
)
"""The real view's infrastructure checks in its order; Milvus (OAK off) reads ``degraded``."""


def _health_body(
    *,
    backend_down: bool,
    circuit_open: bool,
    trace_id: str | None,
    unhealthy: frozenset[str] = frozenset(),
    no_vector_store: bool = False,
) -> dict[str, Any]:
    """The body of the real root ``GET /health`` (somabrain/config/urls.py ``health_view``).

    ``ready`` is false without a vector store, as observed on the real server.
    """
    infrastructure = {
        key: _check(name, key not in unhealthy, details) for key, name, details in _INFRASTRUCTURE
    }
    sfm_details = {"healthy": not no_vector_store}
    internal_services = {
        "soma_fractal_memory": _check("SomaFractalMemory", not backend_down, sfm_details),
        "cognitive": _check(
            "Cognitive", True, {"planner_loaded": True, "option_manager_loaded": True}
        ),
        "embedder": _check("Embedder", True, {"loaded": True}),
    }
    checks = [*infrastructure.values(), *internal_services.values()]
    unhealthy_count = sum(1 for c in checks if c["status"] == "unhealthy")
    degraded = sum(1 for c in checks if c["status"] in ("degraded", "unavailable"))
    healthy = sum(1 for c in checks if c["status"] == "healthy")
    if unhealthy_count:
        status = "critical"
    elif degraded > 2:
        status = "degraded"
    else:
        status = "healthy"
    postgres_ok = "postgresql" not in unhealthy
    kafka_ok = "kafka" not in unhealthy
    opa_ok = "opa" not in unhealthy
    memory_ok = not backend_down and not no_vector_store
    memory_degraded = circuit_open or not memory_ok
    ready = postgres_ok and kafka_ok and memory_ok and not circuit_open
    return {
        "status": status,
        "version": "1.0.0",
        "timestamp": _now_iso(),
        "infrastructure": infrastructure,
        "internal_services": internal_services,
        "healthy_count": healthy,
        "degraded_count": degraded,
        "unhealthy_count": unhealthy_count,
        "ok": status != "critical",
        "ready": ready,
        "namespace": _DEFAULT_NAMESPACE,
        "trace_id": trace_id,
        "postgres_ok": postgres_ok,
        "kafka_ok": kafka_ok,
        "memory_ok": memory_ok,
        "opa_ok": opa_ok,
        "opa_required": False,
        "memory_circuit_open": circuit_open,
        "memory_should_reset": False,
        "memory_degraded": memory_degraded,
        "predictor_ok": memory_ok,  # the real one pings SomaFractalMemory's /healthz for it
        "embedder_ok": True,
        "metrics_ready": postgres_ok and kafka_ok and memory_ok,
        "metrics_required": ["postgres", "kafka", "memory"],
        "milvus_metrics": {},
        "components": {
            "memory": {
                "healthy": memory_ok,
                "circuit_open": circuit_open,
                "should_reset": False,
                "degraded": memory_degraded,
            },
            "postgres": {"ok": postgres_ok},
            "kafka": {"ok": kafka_ok},
            "milvus": {},
            "opa": {"ok": opa_ok},
            "outbox": {"pending": 0, "last_pending_created_at": None},
        },
    }


def _detail(status: int, detail: object) -> web.Response:
    """Django Ninja's error shape: ``{"detail": ...}``."""
    return web.json_response({"detail": detail}, status=status)


def _unauthorized() -> web.Response:
    return _detail(401, "Unauthorized")


# ---------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run one server in the foreground until SIGINT or SIGTERM."""
    parser = cli_parser(
        "python -m loopback.somabrain_server",
        "Fake SomaBrain memory service; control it via POST /_loopback/mode.",
        port=9696,
        name="somabrain",
    )
    parser.add_argument("--token", default=None, help="bearer token the memory routes require")
    add_mode_arguments(parser, sorted(SUPPORTED_MODES, key=lambda mode: mode.value))
    args = parse_cli_args(parser, argv)

    server = SomaBrainServer(args.port, args.name, host=args.host, token=args.token)
    server.set_mode(args.mode, delay_seconds=args.delay)
    return serve_until_signalled(
        server,
        args.name,
        lambda: f"{args.name}: SomaBrain at {server.base_url}, mode={server.mode}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
