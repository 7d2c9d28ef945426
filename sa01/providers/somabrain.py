"""The SomaBrain memory client (aiohttp, behind a circuit breaker).

Remember and recall go through one pooled ``aiohttp.ClientSession`` (opened at the first
call, so that constructing the client does no I/O): per request it costs about a third
of httpx's CPU (0.38 against 1.08 ms measured against the loopback), and a draining
memory backlog makes one request per memory. ``/health`` is read with httpx
(:class:`SomaBrainHealth`), a few times a second at most.

Speaks the API of the real server (``somatechlat/somabrain``, docs/somabrain-api.md):

* ``POST /memory/remember`` with ``{tenant, namespace, key, value, meta, tags}``,
  ``Authorization: Bearer`` and ``X-Request-ID``. SomaBrain embeds and indexes ``value.text``
  (falling back to ``key``), so the memory's content goes to ``value.text``; our own fields
  (``content``, ``session_id``, ``agent_id``) stay beside it. The ``key`` is our idempotency
  key: a replay updates the same memory.
* ``POST /memory/recall`` with ``{query, top_k, layer, namespace}`` and the tenant in
  ``X-Tenant-ID``. Without a namespace SomaBrain searches ``"default"`` and drops every
  long-term hit of another namespace, so the namespace is always sent.

**When is a memory stored?** Only when SomaBrain acknowledged it (200, ``persisted_to_ltm:
true``, no ``queued-for-replay`` warning) *and* its own ``/health`` says the memory backend is
up in a reading taken after the ack (:meth:`SomaBrainHealth.confirm`). SomaBrain answers 200
``persisted_to_ltm: true`` while its backend is down; such an ack raises
:class:`MemoryNotStoredError`, a transient error, so the caller keeps the memory and replays it.

**Recall** reads both layers, in two requests so neither crowds out the other: long-term hits
keep SomaBrain's score; working memory returns every item of the tenant at score 1.0 whatever
the query (and of every namespace), so its items are filtered to our namespace and tenant and
re-scored by the share of the query's words they contain (items sharing none are dropped).
Results are deduplicated by key (the best score wins) and ranked best first.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp

from sa01.core.errors import PermanentError, ServiceUnavailableError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.somabrain_health import SomaBrainHealth
from sa01.resilience.circuit_breaker import BreakerConfig, CircuitBreaker
from schemas.messages import MemoryRecord

__all__ = [
    "DEFAULT_NAMESPACE",
    "QUEUED_WARNING",
    "WORKING_MEMORY_LIMIT",
    "MemoryNotStoredError",
    "RecalledMemory",
    "RememberOutcome",
    "SomaBrainClient",
    "SomaBrainRequestError",
    "rank_recalled",
]

QUEUED_WARNING: Final = "memory-backend-unavailable:queued-for-replay"
DEFAULT_NAMESPACE: Final[str] = MemoryRecord.model_fields["namespace"].default
"""The namespace our memories are written to (``MemoryRecord.namespace``'s default)."""
WORKING_MEMORY_LIMIT: Final = 50
"""How many working-memory items a recall asks for (they come unranked, at score 1.0)."""
_WORD: Final = re.compile(r"\w+")


class SomaBrainRequestError(PermanentError):
    """SomaBrain refused the request itself (4xx other than auth)."""


class MemoryNotStoredError(ServiceUnavailableError):
    """SomaBrain answered remember, but the memory may not be in its store: keep it, replay it."""


class RememberOutcome(enum.StrEnum):
    """What SomaBrain did with a memory (anything else raises :class:`MemoryNotStoredError`)."""

    STORED = "stored"


@dataclass(frozen=True)
class RecalledMemory:
    """One recalled memory, as it goes into the prompt."""

    content: str
    layer: str
    score: float
    key: str = ""


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _text_of(payload: Mapping[str, object]) -> str:
    for name in ("text", "content", "task"):
        value = payload.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _recalled(
    item: Mapping[str, object], tenant: str, namespace: str, query_words: set[str]
) -> RecalledMemory | None:
    """One result item as a :class:`RecalledMemory`, or None when it is not ours to use."""
    payload = item.get("content")
    if isinstance(payload, str):
        payload = {"text": payload}
    if not isinstance(payload, Mapping):
        return None
    owner = payload.get("tenant") or payload.get("tenant_id")
    if (owner and owner != tenant) or payload.get("namespace") not in (None, namespace):
        return None
    text = _text_of(payload)
    if not text:
        return None
    layer = str(item.get("layer", ""))
    key = str(payload.get("key", ""))
    if layer == "wm":
        score = len(query_words & _words(text)) / len(query_words) if query_words else 0.0
        if score == 0.0:
            return None
    else:
        raw = item.get("score")
        score = float(raw) if isinstance(raw, int | float) else 0.0
    return RecalledMemory(text, layer, round(score, 6), key)


def rank_recalled(memories: list[RecalledMemory], top_k: int) -> list[RecalledMemory]:
    """Deduplicate by key (else by text), keep the best score, rank best first, cut at top_k.

    On equal scores long-term wins over working memory, then the order SomaBrain gave.
    """
    best: dict[str, tuple[int, RecalledMemory]] = {}
    for position, memory in enumerate(memories):
        ident = memory.key or memory.content
        kept = best.get(ident)
        if kept is None or (memory.score, memory.layer != "wm") > (
            kept[1].score,
            kept[1].layer != "wm",
        ):
            best[ident] = (position if kept is None else kept[0], memory)
    ordered = sorted(
        best.values(), key=lambda pair: (-pair[1].score, pair[1].layer == "wm", pair[0])
    )
    return [memory for _, memory in ordered[: max(0, top_k)]]


class SomaBrainClient:
    """Async client; constructing it does no I/O."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.base = (settings.somabrain_url or "").rstrip("/")
        token = settings.somabrain_token
        self.headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self.timeout = settings.somabrain_timeout_seconds
        self._session: aiohttp.ClientSession | None = None
        self.health = SomaBrainHealth(settings)
        self.breaker = CircuitBreaker(
            "somabrain",
            BreakerConfig(
                minimum_calls=5,
                window_size=20,
                consecutive_failures_threshold=3,
                wait_in_open=5.0,
                max_wait_in_open=60.0,
                permitted_calls_in_half_open=1,
                slow_call_duration=settings.somabrain_timeout_seconds + 1.0,
                record_exceptions=(ServiceUnavailableError,),
            ),
            metrics=metrics,
        )

    async def close(self) -> None:
        """Close the HTTP clients."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.health.close()

    def _client(self) -> aiohttp.ClientSession:
        """The pooled session (up to 100 connections, all kept alive), opened on first use."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=100),
            )
        return self._session

    async def _post(self, path: str, body: dict[str, object], headers: dict[str, str]) -> object:
        async with self.breaker.call():
            try:
                async with self._client().post(
                    f"{self.base}{path}", json=body, headers={**self.headers, **headers}
                ) as response:
                    status = response.status
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if isinstance(exc, TimeoutError):
                    reason = f"{path} gave no answer within {self.timeout:g}s"
                raise ServiceUnavailableError("somabrain", reason) from exc
            if status >= 500 or status in (401, 403, 429):
                raise ServiceUnavailableError(
                    "somabrain", f"{path} answered {status}: {text[:200]}"
                )
            if status >= 400:
                raise SomaBrainRequestError(f"{path} answered {status}: {text[:200]}")
            answer: object = json.loads(text)
            return answer

    async def remember(self, record: MemoryRecord) -> RememberOutcome:
        """Store ``record`` (idempotent by its ``memory_id``).

        Returns only when the memory is stored (see the module docstring); raises
        :class:`MemoryNotStoredError` when SomaBrain answered but the memory may be lost,
        another transient error when SomaBrain is unavailable, and
        :class:`SomaBrainRequestError` when it refused the request.
        """
        body: dict[str, object] = {
            "tenant": record.tenant_id,
            "namespace": record.namespace,
            "key": record.memory_id,
            "value": {
                "text": record.content,
                "content": record.content,
                "session_id": record.session_id,
                "agent_id": record.agent_id,
            },
            "meta": dict(record.metadata),
            "tags": [f"agent:{record.agent_id}", f"session:{record.session_id}"],
        }
        answer = await self._post("/memory/remember", body, {"X-Request-ID": str(uuid.uuid4())})
        acknowledged_at = time.monotonic()
        fields: Mapping[str, object] = answer if isinstance(answer, Mapping) else {}
        listed = fields.get("warnings")
        warnings = [str(w) for w in listed] if isinstance(listed, list) else []
        if any(w.startswith(QUEUED_WARNING) for w in warnings):
            raise MemoryNotStoredError("somabrain", "remember was only queued for replay")
        if fields.get("persisted_to_ltm") is not True:
            raise MemoryNotStoredError("somabrain", "remember was not persisted to LTM")
        reading = await self.health.confirm(acknowledged_at)
        if not reading.backend_up:
            raise MemoryNotStoredError(
                "somabrain", f"remember acknowledged, but /health says: {reading.reason}"
            )
        return RememberOutcome.STORED

    async def _recall_layer(
        self, tenant: str, namespace: str, query: str, layer: str, top_k: int
    ) -> list[Mapping[str, object]]:
        answer = await self._post(
            "/memory/recall",
            {"query": query, "top_k": top_k, "layer": layer, "namespace": namespace},
            {"X-Tenant-ID": tenant, "X-Namespace": namespace},
        )
        results = answer.get("results") if isinstance(answer, Mapping) else None
        return (
            [item for item in results if isinstance(item, Mapping)]
            if isinstance(results, list)
            else []
        )

    async def recall(
        self, tenant: str, query: str, top_k: int = 5, namespace: str = DEFAULT_NAMESPACE
    ) -> list[RecalledMemory]:
        """Memories of ``tenant`` in ``namespace`` relevant to ``query``, best first.

        Long-term and working memory are asked at once; one failing layer is tolerated, both
        failing raises the long-term error.
        """
        layers = await asyncio.gather(
            self._recall_layer(tenant, namespace, query, "ltm", top_k),
            self._recall_layer(tenant, namespace, query, "wm", WORKING_MEMORY_LIMIT),
            return_exceptions=True,
        )
        if all(isinstance(layer, BaseException) for layer in layers):
            raise layers[0]  # type: ignore[misc]
        words = _words(query)
        memories = [
            memory
            for layer in layers
            if not isinstance(layer, BaseException)
            for item in layer
            if (memory := _recalled(item, tenant, namespace, words)) is not None
        ]
        return rank_recalled(memories, top_k)
