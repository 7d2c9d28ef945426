"""The SomaBrain memory client (httpx, behind a circuit breaker).

Speaks the real API (docs/somabrain-api.md): ``POST /memory/remember`` with
``{tenant, namespace, key, value, meta, tags}`` and ``Authorization: Bearer``,
``X-Request-ID``; ``POST /memory/recall`` with ``{query, top_k, layer}`` and the tenant in
``X-Tenant-ID``. The memory's ``key`` is our idempotency key, so a replay is stored once.
A remember answered with the ``memory-backend-unavailable:queued-for-replay`` warning was
accepted by SomaBrain itself.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from core.errors import PermanentError, ServiceUnavailableError
from core.metrics import Metrics
from core.settings import Settings
from resilience.circuit_breaker import BreakerConfig, CircuitBreaker
from schemas.messages import MemoryRecord

__all__ = [
    "QUEUED_WARNING",
    "RecalledMemory",
    "RememberOutcome",
    "SomaBrainClient",
    "SomaBrainRequestError",
]

QUEUED_WARNING = "memory-backend-unavailable:queued-for-replay"


class SomaBrainRequestError(PermanentError):
    """SomaBrain refused the request itself (4xx other than auth)."""


class RememberOutcome(enum.StrEnum):
    """What SomaBrain did with a memory."""

    STORED = "stored"
    QUEUED = "queued"


@dataclass(frozen=True)
class RecalledMemory:
    """One recalled memory."""

    content: str
    layer: str
    score: float


class SomaBrainClient:
    """Async client; constructing it does no I/O."""

    def __init__(
        self, settings: Settings, metrics: Metrics, client: httpx.AsyncClient | None = None
    ) -> None:
        self.base = settings.somabrain_url.rstrip("/")
        token = settings.somabrain_token
        self.headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        # Keep every pooled connection alive: with more calls in flight than httpx's
        # default 20 keep-alive connections (a memory backlog draining), each extra call
        # opened and closed a TCP connection.
        self.client = client or httpx.AsyncClient(
            timeout=settings.somabrain_timeout_seconds,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
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
        """Close the HTTP client."""
        await self.client.aclose()

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
        async with self.breaker.call():
            try:
                response = await self.client.post(
                    f"{self.base}{path}", json=body, headers={**self.headers, **headers}
                )
            except httpx.HTTPError as exc:
                raise ServiceUnavailableError("somabrain", f"{type(exc).__name__}: {exc}") from exc
            if response.status_code >= 500 or response.status_code in (401, 403, 429):
                raise ServiceUnavailableError(
                    "somabrain", f"{path} answered {response.status_code}: {response.text[:200]}"
                )
            if response.status_code >= 400:
                raise SomaBrainRequestError(
                    f"{path} answered {response.status_code}: {response.text[:200]}"
                )
            return response.json()

    async def remember(self, record: MemoryRecord) -> RememberOutcome:
        """Store ``record`` (idempotent by its ``memory_id``)."""
        body = {
            "tenant": record.tenant_id,
            "namespace": record.namespace,
            "key": record.memory_id,
            "value": {
                "content": record.content,
                "session_id": record.session_id,
                "agent_id": record.agent_id,
            },
            "meta": dict(record.metadata),
            "tags": [f"agent:{record.agent_id}", f"session:{record.session_id}"],
        }
        answer = await self._post("/memory/remember", body, {"X-Request-ID": str(uuid.uuid4())})
        warnings = [str(w) for w in (answer.get("warnings") or [])]
        if any(w.startswith(QUEUED_WARNING) for w in warnings):
            return RememberOutcome.QUEUED
        return RememberOutcome.STORED

    async def recall(self, tenant: str, query: str, top_k: int = 5) -> list[RecalledMemory]:
        """Memories of ``tenant`` relevant to ``query``."""
        answer = await self._post(
            "/memory/recall",
            {"query": query, "top_k": top_k, "layer": "both"},
            {"X-Tenant-ID": tenant},
        )
        memories = []
        for item in answer.get("results") or []:
            content = item.get("content")
            if isinstance(content, dict):
                content = content.get("content", "")
            memories.append(
                RecalledMemory(
                    str(content), str(item.get("layer", "")), float(item.get("score", 0.0))
                )
            )
        return memories
