"""Pydantic v2 models of the messages on the project's topics (see docs/contracts.md).

Validation is strict (no type coercion) and unknown fields are refused; each model
carries a ``schema_version`` so that a producer of another version is told clearly.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

__all__ = [
    "CLIENT_ID_PATTERN",
    "MAX_ATTACHMENTS",
    "MAX_OBSERVED_AHEAD",
    "SCHEMA_VERSION",
    "Attachment",
    "BackupTask",
    "CircuitState",
    "ConversationInbound",
    "ConversationReply",
    "DegradationEvent",
    "MemoryRecord",
    "ServiceState",
    "UploadTask",
    "UseCase",
    "reply_id_for",
    "scoped_key",
    "storable_text",
    "storage_key_problem",
    "tenant_object_key",
    "tenant_upload_key",
]

SCHEMA_VERSION = 1

#: The identifiers a client chooses (tenant, session, agent, message, attachment):
#: ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at
#: most 128 characters. No control character, no ``:`` or ``/`` (so ids joined with
#: them stay unambiguous), and safe as an HTTP header value, a log field, a Redis key
#: part and a storage path segment.
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ClientId = Annotated[str, Field(min_length=1, max_length=128, pattern=CLIENT_ID_PATTERN)]

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
#: Identifiers the system derives itself (reply, memory, upload, event and task ids):
#: printable, at most 255 characters.
Identifier = Annotated[str, Field(min_length=1, max_length=255, pattern=_NO_CONTROL)]

#: The most attachments one message may carry.
MAX_ATTACHMENTS = 16

_REPLY_NAMESPACE = uuid.UUID("6f1c3f4e-4b1e-5d0a-9a57-2f3e8a1c9b10")


def _now() -> datetime:
    return datetime.now(UTC)


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("contains an unpaired surrogate (not valid Unicode)") from exc
    return value


def storable_text(value: str) -> str:
    """``value`` without NUL characters and with unpaired surrogates replaced by U+FFFD:
    text PostgreSQL (``text``, ``jsonb``) and UTF-8 can hold (e.g. a model's answer)."""
    cleaned = value.replace("\x00", "")
    return cleaned.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


#: Free text: any Unicode but NUL and unpaired surrogates, which no store can hold.
StorableText = Annotated[str, AfterValidator(_storable)]


def scoped_key(*parts: str) -> str:
    """``parts`` joined with ``:``: unambiguous because no client id contains ``:``."""
    return ":".join(parts)


def reply_id_for(tenant_id: str, message_id: str) -> str:
    """The deterministic id of the reply to a tenant's message (same input, same id).

    The tenant is part of it: two tenants' equal message ids get different replies.
    """
    return str(uuid.uuid5(_REPLY_NAMESPACE, scoped_key(tenant_id, message_id)))


def tenant_object_key(tenant_id: str, *parts: str) -> str:
    """The key of an object the server stores for ``tenant_id``: ``<tenant>/<parts...>``.

    Every stored object of a tenant lives under its own prefix; ``tenant_id`` is a
    client id, so it cannot be ``.``, ``..`` or hold a ``/``.
    """
    return "/".join((tenant_id, *parts))


def tenant_upload_key(tenant_id: str, name: str) -> str:
    """Where a client-named object of ``tenant_id`` lives: ``<tenant>/uploads/<name>``.

    The client's ``storage_key`` is only a name inside its tenant's upload space, for
    writes and for reads alike: no tenant can name another tenant's object.
    """
    return tenant_object_key(tenant_id, "uploads", name)


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
    NOT_CONFIGURED = "not_configured"
    """An optional provider with no configuration: left out, costs nothing."""


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


#: S3's limit on a key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: The usual file-system limit on one path segment (NAME_MAX), in bytes.
MAX_SEGMENT_BYTES = 255


def storage_key_problem(key: str) -> str | None:
    """Why ``key`` cannot name a stored object, or None when it can.

    A key is a relative ``/``-separated path of non-empty segments: no ``.`` or ``..``
    segment, no leading ``/``, no backslash and no control character, so it cannot
    escape a store's root (the local store checks the resolved path again). It is at
    most 1024 UTF-8 bytes (S3's limit) and each segment at most 255 (a file name's):
    checked before any store is called, so a long key is the caller's error, never a
    store's failure.
    """
    if not key:
        return "is empty"
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        return f"is {size} bytes long in UTF-8 (at most {MAX_KEY_BYTES})"
    if key.startswith("/"):
        return "starts with '/' (keys are relative to the store's root)"
    if "\\" in key:
        return "contains a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "contains a control character"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return f"has a {segment or 'empty'!r} segment (path traversal is refused)"
        segment_size = len(segment.encode("utf-8", "surrogatepass"))
        if segment_size > MAX_SEGMENT_BYTES:
            return (
                f"has a path segment of {segment_size} bytes in UTF-8 (at most {MAX_SEGMENT_BYTES})"
            )
    return None


def _checked_storage_key(value: str) -> str:
    problem = storage_key_problem(value)
    if problem is not None:
        raise ValueError(f"storage key {value[:80]!r} {problem}")
    return value


StorageKey = Annotated[str, AfterValidator(_checked_storage_key)]


class Attachment(BaseModel):
    """A file of a message: a reference to a stored object, or inline content to store.

    With ``content_base64`` the agent stores the bytes under ``storage_key`` along the
    storage chain (their decoded length must be ``size_bytes``); without it the object
    is already stored there.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    attachment_id: ClientId
    content_type: Annotated[StorableText, Field(min_length=1, max_length=255)]
    size_bytes: Annotated[int, Field(ge=0)]
    storage_key: StorageKey
    content_base64: str | None = None

    @model_validator(mode="after")
    def _content_matches_size(self) -> Attachment:
        if self.content_base64 is not None:
            try:
                data = base64.b64decode(self.content_base64, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"content_base64 is not base64: {exc}") from exc
            if len(data) != self.size_bytes:
                raise ValueError(
                    f"content_base64 holds {len(data)} bytes but size_bytes says {self.size_bytes}"
                )
        return self

    def content(self) -> bytes | None:
        """The inline bytes, if the message carries them."""
        if self.content_base64 is None:
            return None
        return base64.b64decode(self.content_base64)

    @property
    def is_audio(self) -> bool:
        """Whether this is a voice recording."""
        return self.content_type.split(";", 1)[0].strip().lower().startswith("audio/")


class ConversationInbound(_Message):
    """A user's message on ``conversation.inbound`` (key ``tenant_id:session_id``)."""

    message_id: ClientId
    tenant_id: ClientId
    session_id: ClientId
    agent_id: ClientId
    text: Annotated[StorableText, Field(max_length=100_000)]
    use_case: UseCase = UseCase.CHAT
    created_at: AwareDatetime
    voice: bool = False
    attachments: Annotated[tuple[Attachment, ...], Field(max_length=MAX_ATTACHMENTS)] = ()

    @property
    def partition_key(self) -> str:
        """The Kafka key of this message and of its reply."""
        return f"{self.tenant_id}:{self.session_id}"


class ConversationReply(_Message):
    """The agent's answer on ``conversation.outbound`` (key ``tenant_id:session_id``)."""

    message_id: Identifier
    in_reply_to: ClientId
    tenant_id: ClientId
    session_id: ClientId
    text: str
    model: Annotated[str, Field(max_length=255)]
    degraded: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    created_at: AwareDatetime = Field(default_factory=_now)
    #: The spoken reply of a voice message (stored audio), if a TTS provider made one.
    attachments: tuple[Attachment, ...] = ()
    #: For a voice message: the TTS link that spoke the reply; ``native`` means the
    #: client speaks ``text`` with the platform's own voice.
    voice_provider: Annotated[str, Field(max_length=255)] | None = None


#: How far ahead of the reading worker's clock a degradation event may be dated (clock
#: skew between workers); an event dated further ahead is refused.
MAX_OBSERVED_AHEAD = timedelta(minutes=5)


class DegradationEvent(_Message):
    """A change of a service's health on ``degradation.events`` (key: service name)."""

    event_id: Identifier = Field(default_factory=lambda: str(uuid.uuid4()))
    service: Identifier
    state: ServiceState
    previous_state: ServiceState | None = None
    circuit: CircuitState = CircuitState.CLOSED
    reason: Annotated[StorableText, Field(max_length=2000)] = ""
    latency_ms: Annotated[float, Field(ge=0)] | None = None
    observed_at: AwareDatetime = Field(default_factory=_now)
    source: Annotated[StorableText, Field(max_length=255)] = ""

    @field_validator("observed_at")
    @classmethod
    def _not_ahead_of_this_clock(cls, value: datetime) -> datetime:
        # The fold ignores every event older than a service's row: one event dated in the
        # future would freeze that service's health for every worker until then.
        ahead = value - _now()
        if ahead > MAX_OBSERVED_AHEAD:
            raise ValueError(
                f"observed_at is {ahead.total_seconds():.0f} s ahead of this worker's clock "
                f"(at most {MAX_OBSERVED_AHEAD.total_seconds():.0f} s of skew is taken)"
            )
        return value


class MemoryRecord(_Message):
    """A memory to store in SomaBrain, on ``somabrain.memory.remember`` (key ``tenant:agent``).

    ``memory_id`` is the idempotency key and SomaBrain's ``key``: a replayed memory is
    stored once.
    """

    memory_id: Identifier
    tenant_id: ClientId
    agent_id: ClientId
    session_id: ClientId
    namespace: Identifier = "conversation"
    content: Annotated[StorableText, Field(max_length=200_000)]
    metadata: dict[StorableText, StorableText] = Field(default_factory=dict)
    created_at: AwareDatetime = Field(default_factory=_now)

    @property
    def partition_key(self) -> str:
        """Memories of one tenant and agent stay in order on one partition."""
        return f"{self.tenant_id}:{self.agent_id}"


class UploadTask(_Message):
    """An upload still owed to the primary store, on ``upload.retry`` (key: ``upload_id``).

    Either the bytes travel inline (``content_base64``: no store took them) or a
    temporary store holds them (``held_in``); the upload agent moves them to the
    primary store and then deletes any temporary copy.
    """

    upload_id: Identifier
    tenant_id: ClientId
    message_id: ClientId
    storage_key: StorageKey
    content_type: Annotated[str, Field(min_length=1, max_length=255)]
    size_bytes: Annotated[int, Field(ge=0)]
    content_base64: str | None = None
    held_in: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    created_at: AwareDatetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _has_a_source(self) -> UploadTask:
        if self.content_base64 is None and self.held_in is None:
            raise ValueError("an upload task needs content_base64 or held_in")
        if not self.storage_key.startswith(tenant_object_key(self.tenant_id, "")):
            raise ValueError(
                f"storage_key must lie under its tenant's prefix {self.tenant_id + '/'!r}"
            )
        return self


class BackupTask(_Message):
    """Copy a tenant's stored objects to the backup store, on ``backup.tasks``
    (key ``tenant_id:task_id``).

    ``storage_keys`` are relative to the tenant's prefix (``uploads/notes.txt``,
    ``voice/<reply id>.mp3``): a task reads and writes only its tenant's objects.
    """

    task_id: Identifier
    tenant_id: ClientId
    storage_keys: Annotated[tuple[StorageKey, ...], Field(min_length=1, max_length=1000)]
    requested_by: Annotated[str, Field(max_length=255)] = ""
    created_at: AwareDatetime = Field(default_factory=_now)

    @property
    def partition_key(self) -> str:
        """The tenant leads the key: its tasks share the tenant's part of the read-ahead."""
        return f"{self.tenant_id}:{self.task_id}"
