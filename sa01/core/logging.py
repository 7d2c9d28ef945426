"""Log records with fields, and how they are printed.

Guarantees:

* Ids and other key-value data (tenant, session, message_id, service, position, ...)
  are passed as fields (``logger.warning("...", extra={"message_id": mid})``), never
  interpolated into the message, so no value can forge a log line: the JSON format
  (``SA01_LOG_FORMAT=json``) prints one JSON object per record on one line, every
  field a key; the text format (the default) prints the message, then each field as
  ``key=value`` with the value JSON-quoted (a newline in it is written ``\\n``).
* Every printed string (message, field, traceback) goes through the redaction that
  :func:`sa01.core.redaction.install_log_redaction` installed.
* Importing this module changes nothing; :func:`configure_logging` (called by the app
  builder) and :func:`apply_format` (called when Faust has set up its handlers) do.
* A client library's reconnect storm does not flood the log (:class:`RateLimitFilter`).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

from sa01.core.redaction import redact_logged
from sa01.core.settings import Settings

__all__ = [
    "PER_REQUEST_LOGGERS",
    "FieldsFormatter",
    "JsonFormatter",
    "RateLimitFilter",
    "apply_format",
    "configure_logging",
    "librdkafka_logger",
    "quiet_noisy_loggers",
    "record_fields",
]

LogFormat = Literal["json", "text"]

#: Attributes every LogRecord has, and those formatters add (``extra``: mode's formatters
#: set it on every record they format): anything else is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "extra",
}

_format: LogFormat = "text"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields given to the log call (``extra=``), in the order they were given."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


def _field_value(value: Any) -> Any:
    """A field as JSON can hold it: scalars kept, text redacted, the rest as text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact_logged(value if isinstance(value, str) else str(value))


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if not record.exc_text:
        return None
    return redact_logged(record.exc_text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, every
    field, ``exception`` (a traceback, as one string) when there is one.

    ``previous`` is the text formatter it replaced (the text format goes back to it)."""

    def __init__(self, previous: logging.Formatter | None = None) -> None:
        super().__init__()
        self.previous = previous

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_logged(record.getMessage()),
        }
        for key, value in record_fields(record).items():
            document.setdefault(key, _field_value(value))
        exception = _exception_text(self, record)
        if exception:
            document["exception"] = exception
        if record.stack_info:
            document["stack"] = redact_logged(self.formatStack(record.stack_info))
        return json.dumps(document, ensure_ascii=False, default=str)


class FieldsFormatter(logging.Formatter):
    """Text lines as ``wrapped`` writes them, the record's fields appended to the message
    as ``key=value`` (values JSON-quoted: control characters escaped)."""

    def __init__(self, wrapped: logging.Formatter | None = None) -> None:
        super().__init__()
        self.wrapped = wrapped or logging.Formatter(
            "[%(asctime)s] [%(process)s] [%(levelname)s] %(name)s: %(message)s"
        )

    def format(self, record: logging.LogRecord) -> str:
        """The wrapped formatter's line with `` key=value ...`` after the message."""
        fields = record_fields(record)
        if not fields:
            return self.wrapped.format(record)
        suffix = " ".join(
            f"{key}={json.dumps(_field_value(value), ensure_ascii=False)}"
            for key, value in fields.items()
        )
        msg, args = record.msg, record.args
        try:
            # Empty arguments, not None: mode's formatter wraps None into (None,), which
            # the formatted message (no placeholder left) would refuse.
            record.msg, record.args = f"{record.getMessage()} {suffix}", ()
            return self.wrapped.format(record)
        finally:
            record.msg, record.args = msg, args


def apply_format(log_format: LogFormat | None = None, root: logging.Logger | None = None) -> None:
    """Give every handler of ``root`` (default: the root logger) the log format
    (default: the one :func:`configure_logging` set); idempotent."""
    log_format = log_format or _format
    for handler in (root or logging.getLogger()).handlers:
        current = handler.formatter
        if isinstance(current, JsonFormatter):
            if log_format == "text":
                handler.setFormatter(FieldsFormatter(current.previous))
        elif log_format == "json":
            text = current.wrapped if isinstance(current, FieldsFormatter) else current
            handler.setFormatter(JsonFormatter(text))
        elif not isinstance(current, FieldsFormatter):
            handler.setFormatter(FieldsFormatter(current))


def configure_logging(settings: Settings, root: logging.Logger | None = None) -> None:
    """Take the log format of ``settings`` (``SA01_LOG_FORMAT``) for this process and
    apply it to the handlers of ``root`` (default: the root logger); a worker applies it
    again once Faust has set its own handlers up (``StreamsWorker``)."""
    global _format
    _format = settings.log_format
    apply_format(settings.log_format, root)


class RateLimitFilter(logging.Filter):
    """Lets one record per message template through every ``seconds``; counts the rest."""

    def __init__(self, seconds: float = 10.0) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """True when the record may be emitted."""
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.suppressed = suppressed  # a field: "and N similar" since the last one
        self._last[key] = now
        return True


#: Loggers that write one INFO line per request (httpx: ``HTTP Request: POST ...``): a
#: draining memory backlog spent 5% of the worker's CPU writing them. Warnings stay.
PER_REQUEST_LOGGERS = ("httpx",)


def quiet_noisy_loggers(seconds: float = 10.0, prefixes: tuple[str, ...] = ("aiokafka",)) -> None:
    """Rate-limit every logger under ``prefixes`` (they repeat one line per reconnect), and
    keep :data:`PER_REQUEST_LOGGERS` to warnings."""
    for name in PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(RateLimitFilter(seconds))


def librdkafka_logger(seconds: float = 10.0) -> logging.Logger:
    """The logger librdkafka's own lines go to (confluent-kafka's ``logger`` setting),
    rate-limited: a stopped broker otherwise prints a connect failure every second."""
    logger = logging.getLogger("librdkafka")
    if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
        logger.addFilter(RateLimitFilter(seconds))
    return logger
