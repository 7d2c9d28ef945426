"""Per-call overhead of the circuit breaker on a trivial coroutine.

Measures, for ``ITERATIONS`` awaits, a bare ``await trivial()`` against the same call
through ``breaker.run(trivial)`` and through ``async with breaker.call()`` (and, for
reference, ``run`` on a breaker that updates Prometheus metrics). Each variant is
repeated ``REPEATS`` times; the median and the min-max spread of ns/call are printed,
with the ratio of each median to the bare median.

Run: ``python -m bench.breaker_overhead [--iterations N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from sa01.core.metrics import Metrics
from sa01.resilience.circuit_breaker import BreakerConfig, CircuitBreaker

__all__ = ["ITERATIONS", "REPEATS", "Measurement", "main", "measure"]

ITERATIONS = 200_000
REPEATS = 5

Measurement = tuple[str, list[float]]
"""A variant's label and its ns/call for each repeat."""


async def _trivial() -> int:
    return 1


def _breaker(metrics: Metrics | None = None) -> CircuitBreaker:
    # Large window, thresholds never reached: every call takes the closed-state path.
    config = BreakerConfig(window_size=100, minimum_calls=100, consecutive_failures_threshold=None)
    return CircuitBreaker("bench", config, metrics=metrics)


async def _bare(n: int) -> int:
    started = time.perf_counter_ns()
    for _ in range(n):
        await _trivial()
    return time.perf_counter_ns() - started


def _through_run(breaker: CircuitBreaker) -> Callable[[int], Awaitable[int]]:
    async def loop(n: int) -> int:
        run = breaker.run
        started = time.perf_counter_ns()
        for _ in range(n):
            await run(_trivial)
        return time.perf_counter_ns() - started

    return loop


def _through_context(breaker: CircuitBreaker) -> Callable[[int], Awaitable[int]]:
    async def loop(n: int) -> int:
        call = breaker.call
        started = time.perf_counter_ns()
        for _ in range(n):
            async with call():
                await _trivial()
        return time.perf_counter_ns() - started

    return loop


async def measure(iterations: int, repeats: int) -> list[Measurement]:
    """ns/call of each variant, ``repeats`` times each, interleaved to share drift."""
    variants: list[tuple[str, Callable[[int], Awaitable[int]]]] = [
        ("bare await", _bare),
        ("breaker.run", _through_run(_breaker())),
        ("async with breaker.call()", _through_context(_breaker())),
        ("breaker.run + metrics", _through_run(_breaker(Metrics(CollectorRegistry())))),
    ]
    results: dict[str, list[float]] = {label: [] for label, _ in variants}
    for _, loop in variants:  # warm-up
        await loop(min(iterations, 10_000))
    for _ in range(repeats):
        for label, loop in variants:
            results[label].append(await loop(iterations) / iterations)
    return list(results.items())


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.iterations, args.repeats))
    bare = statistics.median(results[0][1])
    print(f"circuit breaker overhead: {args.iterations} calls x {args.repeats} repeats")
    print(f"{'variant':28s} {'median ns/call':>15s} {'min-max':>17s} {'ratio':>7s}")
    for label, samples in results:
        median = statistics.median(samples)
        spread = f"{min(samples):.0f}-{max(samples):.0f}"
        print(f"{label:28s} {median:15.0f} {spread:>17s} {median / bare:6.2f}x")
    for label, samples in results[1:]:
        extra = statistics.median(samples) - bare
        print(f"overhead of {label}: {extra:.0f} ns/call")


if __name__ == "__main__":
    main()
