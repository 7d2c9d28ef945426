"""Logging helpers: keep a client library's reconnect storm from flooding the log."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitFilter", "librdkafka_logger", "quiet_noisy_loggers"]


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
            record.msg = f"{record.msg} (and {suppressed} similar in the last {self.seconds:.0f}s)"
        self._last[key] = now
        return True


def quiet_noisy_loggers(seconds: float = 10.0, prefixes: tuple[str, ...] = ("aiokafka",)) -> None:
    """Rate-limit every logger under ``prefixes`` (they repeat one line per reconnect)."""
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
