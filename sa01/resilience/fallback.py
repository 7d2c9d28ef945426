"""One fallback chain for every kind of provider (LLM, TTS, STT, storage, ...).

A chain tries its links in order. A link whose breaker refuses the call is skipped
without touching the provider (the breaker counts it ``rejected``); a tried link runs
under its breaker and its own timeout (an expired timeout is recorded on the breaker
as a failure whatever its exception filters say). The first answer wins. An
exception the caller says not to fail over on (``should_fail_over(exc)`` is false: a
request every provider would refuse) is re-raised at once. When no link answers the chain raises
:class:`FallbackExhaustedError`: it never hands back the primary as a last resort.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sa01.core.errors import FallbackExhaustedError
from sa01.resilience.circuit_breaker import BreakerState, CircuitBreaker

__all__ = ["ChainLink", "ChainResult", "FailoverCallback", "FallbackChain"]

logger = logging.getLogger(__name__)

P = TypeVar("P")
T = TypeVar("T")

FailoverCallback = Callable[[str, str], None]
"""``on_failover(from_name, to_name)``: the caller maps it to its own metric."""


def _always(_: BaseException) -> bool:
    return True


@dataclass(frozen=True)
class ChainLink(Generic[P]):
    """A provider with its breaker and the timeout of one call to it (seconds)."""

    name: str
    provider: P
    breaker: CircuitBreaker
    timeout: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ChainLink.name must not be empty")
        if not isinstance(self.timeout, int | float) or not self.timeout > 0:
            raise ValueError(
                f"ChainLink.timeout of {self.name!r} must be > 0 s, got {self.timeout!r}"
            )


@dataclass(frozen=True)
class ChainResult(Generic[T]):
    """The answer, which link gave it, and what happened on the way.

    ``attempts`` holds ``(name, outcome)`` in order, outcome one of ``ok``,
    ``skipped_open``, ``timeout`` or ``failed: <ExceptionClass>``; ``failovers`` holds
    each ``(from, to)`` switch reported to ``on_failover``.
    """

    value: T
    provider: str
    attempts: list[tuple[str, str]]
    failovers: list[tuple[str, str]]


class FallbackChain(Generic[P]):
    """Links tried in order until one answers; see the module docstring.

    ``on_failover(from_name, to_name)`` fires, before the call, for each link that was
    skipped or failed since the previous tried link, naming the next link tried. A
    callback that raises is logged and ignored.
    """

    def __init__(
        self,
        links: Sequence[ChainLink[P]],
        *,
        on_failover: FailoverCallback | None = None,
        name: str = "chain",
    ) -> None:
        if not links:
            raise ValueError(f"fallback chain {name!r} needs at least one link")
        names = [link.name for link in links]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"fallback chain {name!r} has duplicate link names {duplicates}")
        self._links: tuple[ChainLink[P], ...] = tuple(links)
        self._on_failover = on_failover
        self._name = name

    @property
    def name(self) -> str:
        """The chain's name (used in messages)."""
        return self._name

    @property
    def links(self) -> tuple[ChainLink[P], ...]:
        """The links, in the order they are tried."""
        return self._links

    def states(self) -> dict[str, BreakerState]:
        """Each link's breaker state, by link name."""
        return {link.name: link.breaker.state for link in self._links}

    async def run(
        self,
        operation: Callable[[P], Awaitable[T]],
        *,
        should_fail_over: Callable[[BaseException], bool] = _always,
    ) -> ChainResult[T]:
        """``await operation(provider)`` on the first link that answers.

        Raises the provider's exception unchanged when ``should_fail_over`` says no,
        :class:`FallbackExhaustedError` (``__cause__``: the last exception, if any)
        when every link was skipped or failed. Cancellation propagates; the call in
        flight is released on its breaker with no outcome.
        """
        attempts: list[tuple[str, str]] = []
        failovers: list[tuple[str, str]] = []
        pending: list[str] = []  # skipped or failed since the last tried link
        last_error: BaseException | None = None
        for link in self._links:
            permit = link.breaker.acquire_permit()
            if permit is None:
                attempts.append((link.name, "skipped_open"))
                pending.append(link.name)
                continue
            for previous in pending:
                failovers.append((previous, link.name))
                self._notify(previous, link.name)
            pending.clear()
            deadline = asyncio.timeout(link.timeout)
            try:
                async with deadline:
                    value = await operation(link.provider)
            except Exception as exc:
                if isinstance(exc, TimeoutError) and deadline.expired():
                    permit.failure()
                    outcome = "timeout"
                else:
                    permit.error(exc)
                    outcome = f"failed: {type(exc).__name__}"
                attempts.append((link.name, outcome))
                if not should_fail_over(exc):
                    raise
                logger.info("chain %r: link %r %s", self._name, link.name, outcome)
                last_error = exc
                pending.append(link.name)
                continue
            except BaseException:
                permit.release()
                raise
            permit.success()
            attempts.append((link.name, "ok"))
            return ChainResult(value, link.name, attempts, failovers)
        summary = ", ".join(f"{name}={outcome}" for name, outcome in attempts)
        raise FallbackExhaustedError(
            f"no link of chain {self._name!r} answered: {summary}"
        ) from last_error

    def _notify(self, from_name: str, to_name: str) -> None:
        logger.warning("chain %r: failing over from %r to %r", self._name, from_name, to_name)
        if self._on_failover is None:
            return
        try:
            self._on_failover(from_name, to_name)
        except Exception:
            logger.exception("on_failover of chain %r raised", self._name)
