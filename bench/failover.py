"""Latency a failover adds, before and after the primary's breaker opens.

Two loopback LLM servers (real HTTP, the chain's own client for ``openai/gpt-4o``: the
shared openai SDK client): the primary refuses connections, returns 500 or hangs; the
fallback answers. Baseline in the same run: the fallback
called directly, without a chain.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import table, write_result
from loopback import FailureMode, LLMServer
from sa01.providers.llm_clients import ModelResponder, OpenAIClients, model_responder
from sa01.resilience.circuit_breaker import BreakerConfig, CircuitBreaker
from sa01.resilience.fallback import ChainLink, FallbackChain

HANG_TIMEOUT = 1.0
THRESHOLD = 5


def _responder(server: LLMServer, timeout: float, clients: OpenAIClients) -> ModelResponder:
    return model_responder(
        "openai/gpt-4o",
        api_base=server.openai_base_url,
        api_key="sk-bench",
        timeout=timeout,
        clients=clients,
    )


async def _timed(call: Any) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


async def run(quick: bool) -> dict[str, Any]:
    after_open = 20 if quick else 100
    primary, fallback = LLMServer(name="primary"), LLMServer(name="fallback")
    primary.start()
    fallback.start()
    clients = OpenAIClients()
    try:
        direct = _responder(fallback, 30.0, clients)
        await direct.respond("warm up", session_key="b")
        baseline = [
            await _timed(lambda: direct.respond("hi", session_key="b")) for _ in range(after_open)
        ]
        results: dict[str, Any] = {"baseline_direct_fallback_ms": statistics.median(baseline)}
        rows = [
            (
                "primary",
                "before open (median ms)",
                "after open (median ms)",
                "added before",
                "added after",
            )
        ]
        for mode in (FailureMode.REFUSE, FailureMode.ERROR_500, FailureMode.HANG):
            primary.set_mode(mode)
            breaker = CircuitBreaker(
                "primary",
                BreakerConfig(
                    consecutive_failures_threshold=THRESHOLD,
                    wait_in_open=600.0,
                    max_wait_in_open=600.0,
                    minimum_calls=THRESHOLD,
                    window_size=THRESHOLD,
                ),
            )
            chain: FallbackChain[ModelResponder] = FallbackChain(
                [
                    ChainLink(
                        "primary",
                        _responder(primary, HANG_TIMEOUT, clients),
                        breaker,
                        HANG_TIMEOUT + 0.5,
                    ),
                    ChainLink("fallback", direct, CircuitBreaker("fallback"), 30.0),
                ]
            )

            async def ask(chain: FallbackChain[ModelResponder] = chain) -> None:
                await chain.run(lambda p: p.respond("hi", session_key="b"))

            before = [await _timed(ask) for _ in range(THRESHOLD)]
            after = [await _timed(ask) for _ in range(after_open)]
            b, a = statistics.median(before), statistics.median(after)
            base = results["baseline_direct_fallback_ms"]
            results[str(mode)] = {
                "before_open_ms": b,
                "after_open_ms": a,
                "added_before_ms": b - base,
                "added_after_ms": a - base,
            }
            rows.append((str(mode), f"{b:.1f}", f"{a:.2f}", f"{b - base:+.1f}", f"{a - base:+.2f}"))
    finally:
        await clients.aclose()
        primary.stop()
        fallback.stop()
    print(table(rows))
    print(
        "baseline: the fallback called directly, median "
        f"{results['baseline_direct_fallback_ms']:.2f} ms;"
        f" breaker opens after {THRESHOLD} consecutive failures; hang timeout {HANG_TIMEOUT}s"
    )
    write_result("failover", results)
    return results
