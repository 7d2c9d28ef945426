"""The project's one exception hierarchy.

::

    ResilienceError
     ├── ConfigurationError          settings or environment are wrong (permanent)
     │    ├── SchemaMissingError         the database lost the project's tables
     │    └── TopicMissingError          the broker lost one of the project's topics
     ├── TransientError              worth retrying: the cause is outside the message
     │    ├── ServiceUnavailableError    a dependency (a provider, SomaBrain, ...) is down
     │    │    └── InfrastructureUnavailableError  the pipeline's own store (PostgreSQL,
     │    │                                        Kafka) is down: wait, never dead-letter
     │    ├── CircuitOpenError           a breaker refused the call without trying it
     │    └── FallbackExhaustedError     every provider of a chain failed or was skipped
     └── PermanentError              retrying the same input will fail the same way
          ├── MessageDecodeError         bytes that are not JSON / not UTF-8
          ├── MessageValidationError     JSON that does not match the schema
          ├── CallerError                the caller's request is at fault, not a provider:
          │    │                         answered to its own message, never a breaker failure
          │    ├── ProviderRequestError  a provider refused the request (4xx other than 429)
          │    │    ├── RequestTooLongError   longer than the model's context window
          │    │    └── AudioRefusedError     audio a speech provider cannot read or make
          │    └── UploadRefusedError    an upload the stores refuse (too large, key escapes)
          └── ObjectNotFoundError        a stored object that no store holds

Routing (retry, pause, dead-letter) is decided by class, never by message text. Circuit
breakers count only outages, timeouts, 5xx and 429 as failures: they ignore every
:class:`PermanentError`, so no caller's mistake opens a circuit other tenants share.
Third-party errors are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "AudioRefusedError",
    "CallerError",
    "CircuitOpenError",
    "ConfigurationError",
    "FallbackExhaustedError",
    "InfrastructureUnavailableError",
    "MessageDecodeError",
    "MessageValidationError",
    "ObjectNotFoundError",
    "PermanentError",
    "ProviderRequestError",
    "RequestTooLongError",
    "ResilienceError",
    "SchemaMissingError",
    "ServiceUnavailableError",
    "TopicMissingError",
    "TransientError",
    "UploadRefusedError",
]


class ResilienceError(Exception):
    """Base of every error raised by this project."""


class ConfigurationError(ResilienceError):
    """Settings, arguments or the environment are wrong; fix them and start again."""


class SchemaMissingError(ConfigurationError):
    """The database lacks the project's tables (dropped, or never migrated)."""


class TopicMissingError(ConfigurationError):
    """The broker lacks one of the project's topics (deleted under a running worker)."""


class TransientError(ResilienceError):
    """A failure whose cause lies outside the input: retrying later may succeed."""


class ServiceUnavailableError(TransientError):
    """A dependency did not answer or refused the call."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} is not available: {detail}")
        self.service = service
        self.detail = detail


class InfrastructureUnavailableError(ServiceUnavailableError):
    """The pipeline's own storage (PostgreSQL, Kafka) is down: pause and retry, never give up."""


class CircuitOpenError(TransientError):
    """A circuit breaker is open and refused the call without trying it."""

    def __init__(self, name: str) -> None:
        super().__init__(f"circuit {name!r} is open")
        self.name = name


class PermanentError(ResilienceError):
    """Retrying the same input will fail the same way: dead-letter it."""


class MessageDecodeError(PermanentError):
    """The bytes of a message are not UTF-8 JSON."""


class MessageValidationError(PermanentError):
    """The JSON of a message does not satisfy its schema."""


class FallbackExhaustedError(TransientError):
    """Every provider of a fallback chain failed or was skipped."""


class CallerError(PermanentError):
    """The caller's request is at fault: answered to its own message, never a breaker failure."""


class ProviderRequestError(CallerError):
    """A provider refused the request itself (HTTP 4xx other than 401, 403 and 429)."""


class RequestTooLongError(ProviderRequestError):
    """The request is longer than the model's context window."""


class AudioRefusedError(ProviderRequestError):
    """A speech provider cannot read the audio, or cannot speak the text, it was given."""


class UploadRefusedError(CallerError):
    """An upload no store will take: too large, or a key that escapes the store's root."""


class ObjectNotFoundError(PermanentError):
    """No store holds the object asked for."""
