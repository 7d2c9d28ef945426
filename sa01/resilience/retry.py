"""Retry while the infrastructure is down: exponential backoff with jitter, bounded.

Contract:

* :class:`Backoff` is an immutable policy. The wait after the ``n``-th consecutive
  failure (``n >= 1``) is ``min(initial * multiplier ** (n - 1), maximum)``, shortened
  at random by up to ``jitter`` of itself, so processes that failed together do not
  retry together. It is never negative and never above ``maximum``.
* :func:`retry_while_unavailable` calls an operation until it returns. Only
  :class:`~core.errors.InfrastructureUnavailableError` (PostgreSQL or Kafka down) is
  retried, with the failure count growing, so the waits really grow; any other error
  propagates at once. It stops when ``stopping`` is set (raising the last error), and
  the wait is interrupted by ``stopping`` too.
* Randomness is injectable (``random``), and so is the sleep, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sa01.core.errors import InfrastructureUnavailableError

__all__ = ["Backoff", "retry_while_unavailable", "sleep_unless"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """How long to wait after consecutive failures: exponential, jittered, bounded."""

    initial: float = 0.2
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    """Fraction (0..1) of each wait that may be cut at random."""

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError(f"invalid backoff {self!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must lie in [0, 1], not {self.jitter}")

    def ceiling(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures, before jitter."""
        exponent = max(failures, 1) - 1
        if exponent > 64:  # far past any maximum; avoids float overflow
            return self.maximum
        return float(min(self.initial * self.multiplier**exponent, self.maximum))

    def delay(self, failures: int, random: Callable[[], float] = _random.random) -> float:
        """The jittered wait after ``failures`` consecutive failures."""
        ceiling = self.ceiling(failures)
        return ceiling * (1.0 - self.jitter * random())


async def sleep_unless(stopping: asyncio.Event | None, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stopping`` gets set."""
    if stopping is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def retry_while_unavailable(
    operation: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    what: str = "operation",
    stopping: asyncio.Event | None = None,
    random: Callable[[], float] = _random.random,
    sleep: Callable[[asyncio.Event | None, float], Awaitable[None]] = sleep_unless,
) -> T:
    """``await operation()`` until it returns, waiting out infrastructure outages.

    Raises the last :class:`InfrastructureUnavailableError` when ``stopping`` is set,
    and any other exception at once.
    """
    failures = 0
    while True:
        try:
            return await operation()
        except InfrastructureUnavailableError as exc:
            if stopping is not None and stopping.is_set():
                raise
            failures += 1
            wait = backoff.delay(failures, random)
            logger.warning("%s waits for %s: retry %d in %.2fs", what, exc, failures, wait)
            await sleep(stopping, wait)
            if stopping is not None and stopping.is_set():
                raise
