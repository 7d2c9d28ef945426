"""Secrets out of everything printed: URLs, error lines, log records.

* :func:`redact_url` hides a URL's password (``redis://:***@host:6379/0``) and
  libpq's ``password=...``.
* :func:`redact_text` does that for every URL inside a text and replaces each
  configured secret (``SecretStr`` settings, the passwords of the service URLs) with
  ``***``.
* :func:`install_log_redaction` makes every log record of the process go through
  :func:`redact_text` (message, arguments and traceback), whatever handler prints it;
  :func:`redact_logged` applies the same to a record's fields (``extra=``, set on the
  record after the factory ran), which the formatters of sa01.core.logging call.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr, ValidationError

from sa01.core.settings import Settings

__all__ = [
    "MASK",
    "configured_secrets",
    "describe_validation_error",
    "install_log_redaction",
    "redact_logged",
    "redact_text",
    "redact_url",
]

MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@\s/]+)@")
_KEYWORD_PASSWORD = re.compile(
    r"(?P<key>\b(?:password|passwd|sasl\.password|sslpassword)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|[^\s&]+)",
    re.IGNORECASE,
)
_SHORTEST_SECRET = 8
"""Shorter configured values are not replaced in free text (they would mask words such
as a legacy ``sa01``); inside URLs every password is."""


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or ``password=``) replaced by ``***``."""
    return _KEYWORD_PASSWORD.sub(
        lambda m: f"{m['key']}{MASK}", _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", url)
    )


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords and every value of ``secrets`` replaced by ``***``."""
    text = redact_url(text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _SHORTEST_SECRET:
            text = text.replace(secret, MASK)
    return text


def _url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    if password:
        return unquote(password)
    match = _KEYWORD_PASSWORD.search(url)
    return match["value"].strip("'") if match else None


def configured_secrets(settings: Settings) -> set[str]:
    """Every secret in ``settings``: ``SecretStr`` values and the services' passwords."""
    secrets = {
        value.get_secret_value()
        for name in Settings.model_fields
        if isinstance(value := getattr(settings, name), SecretStr) and value.get_secret_value()
    }
    for url in (settings.database_url, settings.redis_url):
        password = _url_password(url)
        if password:
            secrets.add(password)
    return secrets


def describe_validation_error(exc: ValidationError) -> str:
    """A settings error without the input values (they may hold secrets)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    )


class _RedactingRecordFactory:
    """Wraps the current log record factory; records leave it redacted."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.secrets: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.wrapped(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it for the handler to report
            return record
        redacted = redact_text(message, self.secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(
                logging.Formatter().formatException(record.exc_info), self.secrets
            )
        return record


_install_lock = threading.Lock()


def install_log_redaction(settings: Settings) -> None:
    """Redact every later log record of this process (idempotent; secrets accumulate)."""
    with _install_lock:
        factory = logging.getLogRecordFactory()
        if not isinstance(factory, _RedactingRecordFactory):
            factory = _RedactingRecordFactory(factory)
            logging.setLogRecordFactory(factory)
        factory.secrets |= configured_secrets(settings)


def redact_logged(text: str) -> str:
    """``text`` redacted as :func:`install_log_redaction` redacts log records (URL
    passwords always; configured secrets once installed)."""
    factory = logging.getLogRecordFactory()
    secrets = factory.secrets if isinstance(factory, _RedactingRecordFactory) else set()
    return redact_text(text, secrets)
