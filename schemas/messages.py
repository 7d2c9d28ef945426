"""Pydantic v2 models of the messages on the project's topics (see docs/contracts.md).

Validation is strict (no type coercion) and unknown fields are refused; each model
carries a ``schema_version`` so that a producer of another version is told clearly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "SCHEMA_VERSION",
    "Attachment",
    "CircuitState",
    "ConversationInbound",
    "ConversationReply",
    "DegradationEvent",
    "MemoryRecord",
    "ServiceState",
    "UseCase",
    "reply_id_for",
]

SCHEMA_VERSION = 1

Identifier = Annotated[str, Field(min_length=1, max_length=255)]
_REPLY_NAMESPACE = uuid.UUID("6f1c3f4e-4b1e-5d0a-9a57-2f3e8a1c9b10")


def _now() -> datetime:
    return datetime.now(UTC)


def reply_id_for(message_id: str) -> str:
    """The deterministic id of the reply to ``message_id`` (same input, same reply id)."""
    return str(uuid.uuid5(_REPLY_NAMESPACE, message_id))


class UseCase(StrEnum):
    """Which LLM fallback chain answers a message."""

    CHAT = "chat"
    CODING = "coding"
    FAST = "fast"


class ServiceState(StrEnum):
    """Health of one monitored service."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"


class CircuitState(StrEnum):
    """State of the circuit breaker in front of a service."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    schema_version: Literal[1] = 1

    @field_validator("schema_version", mode="before")
    @classmethod
    def _known_version(cls, value: object) -> object:
        if isinstance(value, bool) or value != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported schema_version {value!r}: this consumer reads {SCHEMA_VERSION}"
            )
        return value


class Attachment(BaseModel):
    """A file the user attached, already stored (the message carries only its reference)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    attachment_id: Identifier
    content_type: Annotated[str, Field(min_length=1, max_length=255)]
    size_bytes: Annotated[int, Field(ge=0)]
    storage_key: Annotated[str, Field(min_length=1, max_length=1024)]


class ConversationInbound(_Message):
    """A user's message on ``conversation.inbound`` (key ``tenant_id:session_id``)."""

    message_id: Identifier
    tenant_id: Identifier
    session_id: Identifier
    agent_id: Identifier
    text: Annotated[str, Field(max_length=100_000)]
    use_case: UseCase = UseCase.CHAT
    created_at: AwareDatetime
    voice: bool = False
    attachments: tuple[Attachment, ...] = ()

    @property
    def partition_key(self) -> str:
        """The Kafka key of this message and of its reply."""
        return f"{self.tenant_id}:{self.session_id}"


class ConversationReply(_Message):
    """The agent's answer on ``conversation.outbound`` (key ``tenant_id:session_id``)."""

    message_id: Identifier
    in_reply_to: Identifier
    tenant_id: Identifier
    session_id: Identifier
    text: str
    model: Annotated[str, Field(max_length=255)]
    degraded: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    created_at: AwareDatetime = Field(default_factory=_now)


class DegradationEvent(_Message):
    """A change of a service's health on ``degradation.events`` (key: service name)."""

    event_id: Identifier = Field(default_factory=lambda: str(uuid.uuid4()))
    service: Identifier
    state: ServiceState
    previous_state: ServiceState | None = None
    circuit: CircuitState = CircuitState.CLOSED
    reason: Annotated[str, Field(max_length=2000)] = ""
    latency_ms: Annotated[float, Field(ge=0)] | None = None
    observed_at: AwareDatetime = Field(default_factory=_now)
    source: Annotated[str, Field(max_length=255)] = ""


class MemoryRecord(_Message):
    """A memory to store in SomaBrain, on ``somabrain.memory.remember`` (key ``tenant:agent``).

    ``memory_id`` is the idempotency key and SomaBrain's ``key``: a replayed memory is
    stored once.
    """

    memory_id: Identifier
    tenant_id: Identifier
    agent_id: Identifier
    session_id: Identifier
    namespace: Identifier = "conversation"
    content: Annotated[str, Field(max_length=200_000)]
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: AwareDatetime = Field(default_factory=_now)

    @property
    def partition_key(self) -> str:
        """Memories of one tenant and agent stay in order on one partition."""
        return f"{self.tenant_id}:{self.agent_id}"
