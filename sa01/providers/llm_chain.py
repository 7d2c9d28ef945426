"""The LLM responder behind fallback chains: one chain per use case, one breaker per model.

A provider whose circuit is open costs nothing (the chain skips it). A rate-limited
model is not called before its Retry-After. A request that every model would refuse
(:class:`ProviderRequestError`, e.g. too long) is not failed over: it is a clear error.

:func:`build_responder_chain` is the one factory the runtime calls: it returns a
:class:`ResponderChain`, the responder the settings ask for with every circuit breaker
behind it (``llm:<model>``, as ``/circuits`` names them) and the shared HTTP clients
to close on stop. The echo responder has no breaker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sa01.core.errors import PermanentError, ProviderRequestError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.llm_clients import ModelResponder, OpenAIClients, model_responder
from sa01.providers.llm_config import BreakerSettings, ChainsConfig, load_chains
from sa01.providers.responder import EchoResponder, Responder, ResponderAnswer
from sa01.resilience.circuit_breaker import BreakerConfig, CircuitBreaker
from sa01.resilience.fallback import ChainLink, FallbackChain

__all__ = [
    "ChainResponder",
    "ResponderChain",
    "build_chain_responder",
    "build_responder_chain",
    "llm_breaker_config",
]


def llm_breaker_config(
    settings: Settings, overrides: BreakerSettings | None = None
) -> BreakerConfig:
    """The breaker every LLM link gets: ``SA01_LLM_BREAKER_*``, then the chains file's."""
    o = overrides or BreakerSettings()
    wait = o.wait_seconds or settings.llm_breaker_wait_seconds
    window = o.window_calls or 20
    return BreakerConfig(
        window_type="count",
        window_size=window,
        minimum_calls=min(o.minimum_calls or 10, window),
        failure_rate_threshold=o.failure_rate_percent or 50.0,
        # A call slower than the chain's timeout is cut and counted as a failure, so
        # only failures open the circuit: a loaded machine must not read as an outage.
        slow_call_duration=settings.llm_timeout_seconds + 1.0,
        consecutive_failures_threshold=(
            o.consecutive_failures or settings.llm_breaker_consecutive_failures
        ),
        permitted_calls_in_half_open=o.half_open_calls or 1,
        wait_in_open=wait,
        max_wait_in_open=max(wait * 8, 300.0),
        # A request the model refuses (too long, invalid) is the caller's mistake: it
        # says nothing about the model's health and must not open a shared circuit.
        ignore_exceptions=(PermanentError,),
    )


class ChainResponder:
    """Answers with the first model of the use case's chain that is allowed to and does."""

    def __init__(
        self,
        chains: dict[str, FallbackChain[ModelResponder]],
        clients: OpenAIClients | None = None,
    ) -> None:
        self.chains = chains
        self.clients = clients or OpenAIClients()

    async def respond(
        self,
        text: str,
        *,
        session_key: str,
        context: Sequence[str] = (),
        use_case: str = "chat",
    ) -> ResponderAnswer:
        """Ask the chain of ``use_case``; raises FallbackExhaustedError when none answered."""
        chain = self.chains.get(use_case) or self.chains["chat"]
        result = await chain.run(
            lambda provider: provider.respond(
                text, session_key=session_key, context=context, use_case=use_case
            ),
            should_fail_over=lambda exc: not isinstance(exc, ProviderRequestError),
        )
        return result.value

    def states(self) -> dict[str, str]:
        """Breaker state per model (models are shared between chains)."""
        states: dict[str, str] = {}
        for chain in self.chains.values():
            states.update({name: str(state) for name, state in chain.states().items()})
        return states

    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every model's breaker by its name (``llm:<model>``), each once."""
        return {
            link.breaker.name: link.breaker
            for chain in self.chains.values()
            for link in chain.links
        }

    async def aclose(self) -> None:
        """Close the shared HTTP clients."""
        await self.clients.aclose()


def build_chain_responder(
    settings: Settings, metrics: Metrics, config: ChainsConfig | None = None
) -> ChainResponder:
    """The chains in force (see ``sa01.providers.llm_config``), each model behind one breaker."""
    config = config or load_chains(settings)
    clients = OpenAIClients()
    links: dict[str, ChainLink[ModelResponder]] = {}

    def link(model: str) -> ChainLink[ModelResponder]:
        if model not in links:
            options = config.models.get(model)
            timeout = (options.timeout_seconds if options else None) or settings.llm_timeout_seconds
            key = settings.provider_key(model)
            provider = model_responder(
                model,
                api_base=options.api_base if options else None,
                api_key=key.get_secret_value() if key is not None else None,
                timeout=timeout,
                clients=clients,
            )
            breaker = CircuitBreaker(
                f"llm:{model}", llm_breaker_config(settings, config.breaker), metrics=metrics
            )
            # The chain's own timeout bounds a hung provider even if the client's does not.
            links[model] = ChainLink(model, provider, breaker, timeout + 1.0)
        return links[model]

    def count_failover(from_model: str, to_model: str) -> None:
        metrics.llm_failover_count.labels(from_provider=from_model, to_provider=to_model).inc()

    chains = {
        use_case: FallbackChain(
            [link(m) for m in models], on_failover=count_failover, name=f"llm:{use_case}"
        )
        for use_case, models in config.chains.items()
    }
    # Serve every switch a chain can make at 0 from the start, so that the first real
    # failover is an increase rate() and increase() can see. Besides adjacent models,
    # a chain switches from a model to any later one when the models between are
    # skipped (open circuit) or fail too.
    for models in config.chains.values():
        for index, from_model in enumerate(models):
            for to_model in models[index + 1 :]:
                if to_model != from_model:
                    metrics.llm_failover_count.labels(
                        from_provider=from_model, to_provider=to_model
                    )
    return ChainResponder(chains, clients)


@dataclass(frozen=True)
class ResponderChain:
    """The responder the runtime answers with, and what it must watch and close.

    ``breakers``: every circuit breaker behind ``responder``, by breaker name
    (``llm:<model>``, as ``/circuits``, the metrics and the ``circuit`` command name
    them); empty for the echo responder. ``states()``: each model's breaker state by
    model name, what the health monitor's ``llm`` probe reads.
    """

    responder: Responder
    breakers: Mapping[str, CircuitBreaker] = field(default_factory=dict)
    chain: ChainResponder | None = None

    def states(self) -> dict[str, str]:
        """Breaker state per model name (empty for the echo responder)."""
        return self.chain.states() if self.chain is not None else {}

    async def aclose(self) -> None:
        """Close the shared HTTP clients (nothing for the echo responder)."""
        if self.chain is not None:
            await self.chain.aclose()


def build_responder_chain(settings: Settings, metrics: Metrics) -> ResponderChain:
    """The responder the settings ask for (``echo``, or the LLM fallback chains), typed."""
    if settings.responder == "echo":
        return ResponderChain(EchoResponder())
    chain = build_chain_responder(settings, metrics)
    return ResponderChain(chain, chain.breakers(), chain)
