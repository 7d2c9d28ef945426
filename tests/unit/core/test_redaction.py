"""Passwords and tokens never leave the process in a printed URL, an error or a log line."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr, ValidationError

from sa01.core.redaction import (
    configured_secrets,
    describe_validation_error,
    install_log_redaction,
    redact_text,
    redact_url,
)
from sa01.core.settings import Settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://sa01:hunter2pw@h:6379/0", "redis://sa01:***@h:6379/0"),
        ("postgresql://sa01:p%40ss@127.0.0.1/sa01", "postgresql://sa01:***@127.0.0.1/sa01"),
        ("host=h user=u password='a b c' dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password=xyz123 dbname=d", "host=h password=*** dbname=d"),
        ("http://127.0.0.1:6066/status", "http://127.0.0.1:6066/status"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_a_url_keeps_everything_but_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_configured_secrets_are_every_secret_setting_and_the_service_passwords() -> None:
    settings = Settings(
        database_url="postgresql://sa01:db-pass-123@127.0.0.1:5432/sa01",
        redis_url="redis://:redis-pass-456@127.0.0.1:6379/0",
        operator_token=SecretStr("operator-token-789"),
        OPENAI_API_KEY=SecretStr("sk-openai-000"),  # type: ignore[call-arg]
    )

    secrets = configured_secrets(settings)

    assert {"db-pass-123", "redis-pass-456", "operator-token-789", "sk-openai-000"} <= secrets
    text = "token operator-token-789 and key sk-openai-000 in redis://:redis-pass-456@h"
    assert redact_text(text, secrets) == "token *** and key *** in redis://:***@h"


def test_a_settings_error_does_not_repeat_its_input() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(
            database_url="postgresql://u:top-secret-pw@h/d",
            upload_max_bytes=100_000_000,
        )

    described = describe_validation_error(caught.value)
    assert "top-secret-pw" not in described and "SA01_UPLOAD_MAX_BYTES" in described


def test_every_log_record_is_redacted_message_arguments_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(operator_token=SecretStr("log-token-abcdef"))
    before = logging.getLogRecordFactory()
    install_log_redaction(settings)
    try:
        logger = logging.getLogger("tests.redaction")
        with caplog.at_level(logging.INFO, logger="tests.redaction"):
            logger.info("connecting to %s with %s", "redis://:pw-in-url@h:1/0", "log-token-abcdef")
            try:
                raise RuntimeError("failed with log-token-abcdef")
            except RuntimeError:
                logger.exception("boom")
    finally:
        logging.setLogRecordFactory(before)

    assert "pw-in-url" not in caplog.text and "log-token-abcdef" not in caplog.text
    assert "redis://:***@h:1/0" in caplog.text and "failed with ***" in caplog.text
