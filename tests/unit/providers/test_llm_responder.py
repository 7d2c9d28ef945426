"""The litellm responder against a loopback OpenAI server: 429 and Retry-After, failover."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator

import pytest

from loopback import FailureMode, LLMServer
from sa01.providers.responder import LiteLLMResponder, RateLimitedError, retry_after_seconds
from sa01.resilience.circuit_breaker import CircuitBreaker
from sa01.resilience.fallback import ChainLink, FallbackChain

pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly:UserWarning")


@pytest.fixture
def servers() -> Iterator[tuple[LLMServer, LLMServer]]:
    primary, secondary = LLMServer(name="primary"), LLMServer(name="secondary")
    primary.start()
    secondary.start()
    try:
        yield primary, secondary
    finally:
        primary.stop()
        secondary.stop()


def responder(server: LLMServer) -> LiteLLMResponder:
    return LiteLLMResponder(
        "openai/gpt-4o", api_base=server.openai_base_url, api_key="sk-test", timeout=10.0
    )


async def test_a_429_is_not_called_again_before_its_retry_after(
    servers: tuple[LLMServer, LLMServer],
) -> None:
    primary, _ = servers
    primary.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=30)
    model = responder(primary)

    with pytest.raises(RateLimitedError) as first:
        await model.respond("hello", session_key="s")
    with pytest.raises(RateLimitedError) as second:
        await model.respond("hello again", session_key="s")

    assert 29 <= first.value.retry_after <= 30
    assert second.value.retry_after <= 30
    assert primary.request_count == 1, "the rate-limited model was called again too early"


async def test_the_chain_fails_over_from_a_rate_limited_model_and_counts_the_switch(
    servers: tuple[LLMServer, LLMServer],
) -> None:
    primary, secondary = servers
    primary.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=30)
    switches: list[tuple[str, str]] = []
    chain = FallbackChain(
        [
            ChainLink("primary", responder(primary), CircuitBreaker("primary"), 10.0),
            ChainLink("secondary", responder(secondary), CircuitBreaker("secondary"), 10.0),
        ],
        on_failover=lambda a, b: switches.append((a, b)),
    )

    first = await chain.run(lambda p: p.respond("one", session_key="s"))
    second = await chain.run(lambda p: p.respond("two", session_key="s"))

    assert (first.provider, second.provider) == ("secondary", "secondary")
    assert first.value.text == "[secondary] one"
    assert switches == [("primary", "secondary"), ("primary", "secondary")]
    assert primary.request_count == 1 and secondary.request_count == 2


def test_retry_after_accepts_milliseconds_seconds_and_dates() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "12"}) == 12.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "99999"}) == 300.0
    assert retry_after_seconds(None) == 1.0
