"""Unit tests of the dead-letter headers (KIP-1034 style contract)."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime, timedelta

import pytest

from sa01.core.errors import MessageDecodeError, ServiceUnavailableError
from schemas import headers
from schemas.headers import MAX_STACKTRACE_CHARS, dead_letter_headers

CONTRACT_HEADER_NAMES = {
    "__streams.errors.exception",
    "__streams.errors.message",
    "__streams.errors.stacktrace",
    "__streams.errors.topic",
    "__streams.errors.partition",
    "__streams.errors.offset",
    "dlq.attempts",
    "dlq.failed-at",
    "idempotency-key",
    "content-type",
}
TRUNCATION_PREFIX = "...\n"


def raised(error: BaseException) -> BaseException:
    """``error`` after it was raised and caught (so it carries a traceback)."""
    try:
        raise error
    except BaseException as caught:
        return caught


def build(error: BaseException, **overrides: object) -> dict[str, str]:
    arguments: dict[str, object] = {
        "topic": "conversation.inbound",
        "partition": 3,
        "offset": 1234,
        "attempts": 2,
        "idempotency_key": "conversation.inbound:3:1234",
    }
    arguments.update(overrides)
    return dead_letter_headers(error, **arguments)  # type: ignore[arg-type]


def ping(depth: int) -> int:
    return pong(depth + 1) + 1


def pong(depth: int) -> int:
    return ping(depth + 1) + 1


def deep_recursion_error() -> RecursionError:
    # Mutual recursion: consecutive frames differ, so the traceback is not collapsed
    # into "[Previous line repeated N more times]" and is really long.
    try:
        ping(0)
    except RecursionError as error:
        return error
    raise AssertionError("no RecursionError")


def test_every_contract_header_is_present() -> None:
    result = build(raised(ValueError("bad")))
    assert set(result) == CONTRACT_HEADER_NAMES


def test_header_constants_match_the_contract() -> None:
    constants = {
        getattr(headers, name)
        for name in headers.__all__
        if name.isupper() and isinstance(getattr(headers, name), str)
    }
    assert constants == CONTRACT_HEADER_NAMES


def test_every_header_value_is_a_string() -> None:
    result = build(raised(ValueError("bad")))
    assert all(isinstance(value, str) for value in result.values())


def test_values_describe_the_failed_message() -> None:
    result = build(raised(ValueError("bad value")), content_type="application/json", attempts=3)
    assert result["__streams.errors.message"] == "bad value"
    assert result["__streams.errors.topic"] == "conversation.inbound"
    assert result["__streams.errors.partition"] == "3"
    assert result["__streams.errors.offset"] == "1234"
    assert result["dlq.attempts"] == "3"
    assert result["idempotency-key"] == "conversation.inbound:3:1234"
    assert result["content-type"] == "application/json"


def test_content_type_defaults_to_octet_stream() -> None:
    assert build(raised(ValueError()))["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MessageDecodeError("x"), "sa01.core.errors.MessageDecodeError"),
        (ServiceUnavailableError("kafka", "down"), "sa01.core.errors.ServiceUnavailableError"),
        (ValueError("x"), "builtins.ValueError"),
    ],
)
def test_exception_header_is_the_fully_qualified_class_name(
    error: BaseException, expected: str
) -> None:
    assert build(raised(error))["__streams.errors.exception"] == expected


def test_exception_header_of_a_nested_class_uses_its_qualname() -> None:
    class Inner(Exception):
        pass

    assert build(raised(Inner()))["__streams.errors.exception"] == (
        f"{__name__}.test_exception_header_of_a_nested_class_uses_its_qualname.<locals>.Inner"
    )


def test_stacktrace_of_a_shallow_error_is_complete() -> None:
    stack = build(raised(ValueError("shallow")))["__streams.errors.stacktrace"]
    assert not stack.startswith(TRUNCATION_PREFIX)
    assert "Traceback (most recent call last)" in stack
    assert stack.rstrip().endswith("ValueError: shallow")


def test_stacktrace_of_a_deep_recursion_error_is_bounded() -> None:
    error = deep_recursion_error()
    full = "".join(traceback.format_exception(error))
    assert len(full) > 10 * MAX_STACKTRACE_CHARS  # the precondition of this test

    stack = build(error)["__streams.errors.stacktrace"]
    assert len(stack) <= MAX_STACKTRACE_CHARS + len(TRUNCATION_PREFIX)
    assert stack.startswith(TRUNCATION_PREFIX)
    # The end of the trace (the error itself) is what is kept.
    assert stack.rstrip().endswith(f"RecursionError: {error}")
    assert full.endswith(stack[len(TRUNCATION_PREFIX) :])


def test_message_is_bounded() -> None:
    result = build(raised(ValueError("x" * 10_000)))
    assert result["__streams.errors.message"] == "x" * 2000


def test_failed_at_is_an_iso_datetime_with_timezone() -> None:
    before = datetime.now(UTC)
    result = build(raised(ValueError("x")))
    after = datetime.now(UTC)
    failed_at = datetime.fromisoformat(result["dlq.failed-at"])
    assert failed_at.tzinfo is not None
    assert failed_at.utcoffset() == timedelta(0)
    assert before <= failed_at <= after
