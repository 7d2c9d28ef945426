"""Kafka header names of the contract and the dead-letter headers (KIP-1034 style)."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

__all__ = [
    "CONTENT_TYPE",
    "DLQ_ATTEMPTS",
    "DLQ_FAILED_AT",
    "ERRORS_EXCEPTION",
    "ERRORS_MESSAGE",
    "ERRORS_OFFSET",
    "ERRORS_PARTITION",
    "ERRORS_STACKTRACE",
    "ERRORS_TOPIC",
    "IDEMPOTENCY_KEY",
    "MAX_ERROR_TEXT",
    "MAX_STACKTRACE_CHARS",
    "dead_letter_headers",
]

IDEMPOTENCY_KEY = "idempotency-key"
CONTENT_TYPE = "content-type"
ERRORS_EXCEPTION = "__streams.errors.exception"
ERRORS_MESSAGE = "__streams.errors.message"
#: Error text is cut to this many characters wherever it is stored or logged.
MAX_ERROR_TEXT = 2000
ERRORS_STACKTRACE = "__streams.errors.stacktrace"
ERRORS_TOPIC = "__streams.errors.topic"
ERRORS_PARTITION = "__streams.errors.partition"
ERRORS_OFFSET = "__streams.errors.offset"
DLQ_ATTEMPTS = "dlq.attempts"
DLQ_FAILED_AT = "dlq.failed-at"
MAX_STACKTRACE_CHARS = 4000


def dead_letter_headers(
    error: BaseException,
    *,
    topic: str,
    partition: int,
    offset: int,
    attempts: int,
    idempotency_key: str,
    content_type: str = "application/octet-stream",
) -> dict[str, str]:
    """Headers of a dead-lettered message: the error, where it came from, when, how often."""
    stack = "".join(traceback.format_exception(error))
    if len(stack) > MAX_STACKTRACE_CHARS:
        stack = "...\n" + stack[-MAX_STACKTRACE_CHARS:]
    error_class = type(error)
    return {
        ERRORS_EXCEPTION: f"{error_class.__module__}.{error_class.__qualname__}",
        ERRORS_MESSAGE: str(error)[:MAX_ERROR_TEXT],
        ERRORS_STACKTRACE: stack,
        ERRORS_TOPIC: topic,
        ERRORS_PARTITION: str(partition),
        ERRORS_OFFSET: str(offset),
        DLQ_ATTEMPTS: str(attempts),
        DLQ_FAILED_AT: datetime.now(UTC).isoformat(),
        IDEMPOTENCY_KEY: idempotency_key,
        CONTENT_TYPE: content_type,
    }
