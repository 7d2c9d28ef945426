"""How an LLM provider's failure becomes one of the project's errors.

One mapping for every LLM client (the openai SDK, litellm), by the HTTP status the
provider answered with, so that a model fails the same way whichever client calls it:

========================================  ==========================================
provider's answer                         error raised
========================================  ==========================================
400/413/415/422 saying the context is     :class:`RequestTooLongError` (caller's
too long                                  mistake: breakers ignore it, no failover)
400, 413, 415, 422                        :class:`ProviderRequestError` (same)
401, 403, or no key at all                :class:`ServiceUnavailableError`
                                          "credentials refused"
429                                       :class:`RateLimitedError`, with the seconds
                                          of ``retry-after-ms`` / ``Retry-After``
anything else: 404, 408, 409, 5xx, no     :class:`ServiceUnavailableError` (an
answer, a timeout, an unreadable body     outage: the breaker counts it, the chain
                                          fails over)
========================================  ==========================================

The clients' exceptions are read by their ``status_code`` (the openai SDK's
``APIStatusError`` and every litellm exception carry one), so this module imports
neither client.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any

from sa01.core.errors import ProviderRequestError, RequestTooLongError, ServiceUnavailableError

__all__ = [
    "CALLER_ERROR_STATUSES",
    "CREDENTIAL_STATUSES",
    "MAX_RETRY_AFTER_SECONDS",
    "RateLimitedError",
    "is_context_window_exceeded",
    "provider_failure",
    "retry_after_seconds",
]

#: Statuses by which a provider refuses the request itself, not its own health.
CALLER_ERROR_STATUSES = frozenset({400, 413, 415, 422})
#: Statuses by which a provider refuses the credentials.
CREDENTIAL_STATUSES = frozenset({401, 403})
MAX_RETRY_AFTER_SECONDS = 300.0

# The providers' own words for a prompt longer than the context window (OpenAI,
# OpenAI-compatible servers, Anthropic), as litellm recognises them.
_CONTEXT_WINDOW_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "model's maximum context limit",
    "is longer than the model's context length",
    "exceeds the available context size",
    "prompt is too long",
)


class RateLimitedError(ServiceUnavailableError):
    """The provider answered 429: it is not called again before ``retry_after`` seconds."""

    def __init__(self, model: str, retry_after: float) -> None:
        super().__init__(model, f"rate-limited, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


def retry_after_seconds(headers: Any) -> float:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date); 1 if absent."""
    if headers is None:
        return 1.0
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return min(float(millis) / 1000, MAX_RETRY_AFTER_SECONDS)
        value = headers.get("retry-after")
        if value is None:
            return 1.0
        try:
            return min(max(float(value), 0.0), MAX_RETRY_AFTER_SECONDS)
        except ValueError:
            when = email.utils.parsedate_to_datetime(str(value))
            delta = (when - datetime.now(UTC)).total_seconds()
            return min(max(delta, 0.0), MAX_RETRY_AFTER_SECONDS)
    except (TypeError, ValueError):
        return 1.0


def is_context_window_exceeded(detail: str) -> bool:
    """Whether a provider's refusal says the prompt is longer than the context window."""
    lowered = detail.lower()
    return any(marker in lowered for marker in _CONTEXT_WINDOW_MARKERS)


def _headers(exc: BaseException) -> Any:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    return headers


def provider_failure(
    model: str, exc: BaseException
) -> ProviderRequestError | ServiceUnavailableError:
    """The project's error for ``exc``, a client's failure to get ``model``'s answer."""
    status = getattr(exc, "status_code", None)
    detail = str(exc)
    if status == 429:
        return RateLimitedError(model, retry_after_seconds(_headers(exc)))
    if status in CALLER_ERROR_STATUSES:
        if is_context_window_exceeded(detail):
            return RequestTooLongError(f"{model}: the message is too long: {detail}")
        return ProviderRequestError(f"{model} refused the request: {detail}")
    if status in CREDENTIAL_STATUSES:
        return ServiceUnavailableError(model, f"credentials refused: {detail}")
    return ServiceUnavailableError(model, detail)
