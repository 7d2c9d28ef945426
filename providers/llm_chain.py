"""The LLM responder behind a fallback chain: one breaker per model, failover counted.

A provider whose circuit is open costs nothing (the chain skips it). A request that
every model would refuse (:class:`ProviderRequestError`, e.g. too long) is not failed
over: it is a clear error for the user.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.metrics import Metrics
from core.settings import Settings
from providers.responder import LiteLLMResponder, ProviderRequestError, ResponderAnswer
from resilience.circuit_breaker import BreakerConfig, CircuitBreaker
from resilience.fallback import ChainLink, FallbackChain

__all__ = ["ChainResponder", "build_chain_responder", "llm_breaker_config"]


def llm_breaker_config(settings: Settings) -> BreakerConfig:
    """The breaker every LLM link gets."""
    return BreakerConfig(
        window_type="count",
        window_size=20,
        minimum_calls=10,
        failure_rate_threshold=50.0,
        # A call slower than the chain's timeout is cut and counted as a failure, so
        # only failures open the circuit: a loaded machine must not read as an outage.
        slow_call_duration=settings.llm_timeout_seconds + 1.0,
        consecutive_failures_threshold=settings.llm_breaker_consecutive_failures,
        permitted_calls_in_half_open=1,
        wait_in_open=settings.llm_breaker_wait_seconds,
        max_wait_in_open=max(settings.llm_breaker_wait_seconds * 8, 300.0),
    )


class ChainResponder:
    """Answers with the first model of the chain whose circuit lets it try and that answers."""

    def __init__(self, chain: FallbackChain[LiteLLMResponder]) -> None:
        self.chain = chain

    async def respond(
        self, text: str, *, session_key: str, context: Sequence[str] = ()
    ) -> ResponderAnswer:
        """Ask the chain; raises FallbackExhaustedError when no model answered."""
        result = await self.chain.run(
            lambda provider: provider.respond(text, session_key=session_key, context=context),
            should_fail_over=lambda exc: not isinstance(exc, ProviderRequestError),
        )
        return result.value

    def states(self) -> dict[str, str]:
        """Breaker state per model."""
        return {name: str(state) for name, state in self.chain.states().items()}


def build_chain_responder(settings: Settings, metrics: Metrics) -> ChainResponder:
    """The configured models, in order, each behind its own breaker."""
    models = [settings.llm_model] + [
        m.strip() for m in settings.llm_fallback_models.split(",") if m.strip()
    ]
    links = []
    for model in models:
        key = settings.provider_key(model)
        provider = LiteLLMResponder(
            model,
            api_base=settings.llm_api_base,
            api_key=key.get_secret_value() if key is not None else None,
            timeout=settings.llm_timeout_seconds,
        )
        breaker = CircuitBreaker(f"llm:{model}", llm_breaker_config(settings), metrics=metrics)
        # The chain's own timeout bounds a hung provider even if the client's does not.
        links.append(ChainLink(model, provider, breaker, settings.llm_timeout_seconds + 1.0))

    def count_failover(from_model: str, to_model: str) -> None:
        metrics.llm_failover_count.labels(from_provider=from_model, to_provider=to_model).inc()

    return ChainResponder(FallbackChain(links, on_failover=count_failover, name="llm"))
