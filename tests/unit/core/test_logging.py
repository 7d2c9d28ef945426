"""Log records carry ids as fields: one JSON object per line with SA01_LOG_FORMAT=json,
``key=value`` after the message in text; a newline in an id forges no line; secrets are
redacted in fields too."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from mode.utils.logging import ExtensionFormatter
from pydantic import SecretStr

from sa01.core.logging import FieldsFormatter, JsonFormatter, apply_format, configure_logging
from sa01.core.redaction import install_log_redaction
from sa01.core.settings import Settings

FORGED = 'm-1\n{"level": "CRITICAL", "message": "forged"}'


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    subject = logging.getLogger("tests.logging.subject")
    subject.propagate = False
    subject.setLevel(logging.INFO)
    yield subject
    subject.handlers.clear()


def capture(logger: logging.Logger, formatter: logging.Formatter) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger.handlers[:] = [handler]
    return stream


def test_a_newline_in_an_id_gives_one_json_line_with_the_id_as_a_field(
    logger: logging.Logger,
) -> None:
    stream = capture(logger, JsonFormatter())

    logger.warning("record failed", extra={"message_id": FORGED, "tenant": "t1", "attempt": 2})

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "record failed"
    assert record["message_id"] == FORGED
    assert (record["tenant"], record["attempt"], record["level"]) == ("t1", 2, "WARNING")
    assert record["logger"] == "tests.logging.subject"


def test_a_traceback_stays_inside_its_json_line(logger: logging.Logger) -> None:
    stream = capture(logger, JsonFormatter())
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("giving up", extra={"position": "t:0:1"})

    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert "RuntimeError: boom" in record["exception"] and record["position"] == "t:0:1"


def test_text_lines_append_fields_quoted_so_a_newline_forges_no_line(
    logger: logging.Logger,
) -> None:
    stream = capture(logger, FieldsFormatter(logging.Formatter("%(levelname)s %(message)s")))

    logger.info("voice message unreadable", extra={"message_id": FORGED, "retry": 3})
    logger.info("no fields: %s", "as before")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        'INFO voice message unreadable message_id="m-1\\n{\\"level\\": \\"CRITICAL\\", '
        '\\"message\\": \\"forged\\"}" retry=3'
    )
    assert lines[1] == "INFO no fields: as before"


def test_text_fields_work_with_fausts_formatter_and_a_record_formatted_twice(
    logger: logging.Logger,
) -> None:
    # mode's formatter rewrites a record's arguments and adds an ``extra`` attribute;
    # a second handler then formats the same record again.
    first = capture(logger, FieldsFormatter(ExtensionFormatter(fmt="%(message)s")))
    second = logging.StreamHandler(io.StringIO())
    second.setFormatter(FieldsFormatter(ExtensionFormatter(fmt="%(message)s")))
    logger.addHandler(second)

    logger.warning("%s [%s] %s", "TXNERR", "rdkafka#producer-1", "failed", extra={"shard": 2})
    logger.warning("%s [%s] %s", "TXNERR", "rdkafka#producer-1", "failed")

    for stream in (first, second.stream):
        assert stream.getvalue().splitlines() == [
            "TXNERR [rdkafka#producer-1] failed shard=2",
            "TXNERR [rdkafka#producer-1] failed",
        ]


def test_secrets_in_fields_are_redacted(logger: logging.Logger) -> None:
    secret = "field-secret-7e2a9c41"
    install_log_redaction(Settings(operator_token=SecretStr(secret)))
    json_stream = capture(logger, JsonFormatter())
    logger.warning("refused", extra={"error": f"token {secret}", "url": "redis://:pw123@h:1/0"})
    text_stream = capture(logger, FieldsFormatter())
    logger.warning("refused", extra={"error": f"token {secret}"})

    record = json.loads(json_stream.getvalue())
    assert record["error"] == "token ***" and record["url"] == "redis://:***@h:1/0"
    assert secret not in text_stream.getvalue() and 'error="token ***"' in text_stream.getvalue()


def test_the_setting_chooses_the_format_of_every_handler(logger: logging.Logger) -> None:
    stream = capture(logger, logging.Formatter("%(message)s"))
    configure_logging(Settings(log_format="json"), root=logger)
    try:
        logger.info("hello", extra={"session": "s1"})
        assert json.loads(stream.getvalue())["session"] == "s1"
        apply_format("text", root=logger)
        logger.info("hello", extra={"session": "s1"})
        assert stream.getvalue().splitlines()[1] == 'hello session="s1"'
    finally:
        configure_logging(Settings(log_format="text"), root=logger)
