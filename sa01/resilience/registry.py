"""One registry of every circuit breaker in a process (resilience4j's CircuitBreakerRegistry).

Contract: a :class:`BreakerRegistry` maps a unique name to one
:class:`~resilience.circuit_breaker.CircuitBreaker`. Everything that shows or acts on
breakers reads it: ``/circuits`` and the ``circuit`` command (``streams.circuits``), the
``circuit_breaker_state`` metric (``sa01.core.metrics.Metrics.read_breakers``) and the health
monitor (``sa01.resilience.monitor``). A breaker that is not registered is seen by none of
them, so the set they show is the same by construction. Registering a second breaker
under a taken name raises ``ValueError``; registering the same breaker again is a no-op.

One registry per worker runtime (no module global): tests and tools build their own.
Not thread-safe: use it from the event loop that uses the breakers.
"""

from __future__ import annotations

from collections.abc import Iterator

from sa01.resilience.circuit_breaker import STATE_GAUGE_VALUES, BreakerState, CircuitBreaker

__all__ = ["BreakerRegistry"]


class BreakerRegistry:
    """Every circuit breaker of one runtime, by name."""

    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}

    def register(self, name: str, breaker: CircuitBreaker) -> CircuitBreaker:
        """Add ``breaker`` under ``name`` (its own name); return it.

        Raises ``ValueError`` when ``name`` differs from the breaker's name (the metric
        label and the page would then disagree) or is taken by another breaker.
        """
        if name != breaker.name:
            raise ValueError(f"breaker {breaker.name!r} registered under another name {name!r}")
        known = self._breakers.get(name)
        if known is not None and known is not breaker:
            raise ValueError(f"a different circuit breaker is already registered as {name!r}")
        self._breakers[name] = breaker
        return breaker

    def get(self, name: str) -> CircuitBreaker | None:
        """The breaker registered as ``name``, or ``None``."""
        return self._breakers.get(name)

    def items(self) -> list[tuple[str, CircuitBreaker]]:
        """Every ``(name, breaker)``, sorted by name."""
        return sorted(self._breakers.items())

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._breakers)

    def states(self, prefix: str = "") -> dict[str, BreakerState]:
        """State per breaker whose name starts with ``prefix`` (the prefix removed)."""
        return {
            name.removeprefix(prefix): breaker.state
            for name, breaker in self.items()
            if name.startswith(prefix)
        }

    def gauge_values(self) -> dict[str, int]:
        """The ``circuit_breaker_state`` value of every breaker, by name."""
        return {name: STATE_GAUGE_VALUES[breaker.state] for name, breaker in self.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._breakers)
