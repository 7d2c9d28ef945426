"""The LLM clients against loopback servers: the error mapping, 429 and Retry-After, failover.

Both clients (the openai SDK for ``openai/...``, litellm for the rest) must fail the same
way for the same answer of a provider (``providers.llm_errors``), and neither may retry
inside its SDK: each failure below costs exactly one request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from loopback import FailureMode, LLMServer
from sa01.core.errors import ProviderRequestError, RequestTooLongError, ServiceUnavailableError
from sa01.providers.llm_clients import (
    LiteLLMResponder,
    ModelResponder,
    OpenAIClients,
    OpenAIResponder,
    model_responder,
)
from sa01.providers.llm_errors import RateLimitedError, retry_after_seconds
from sa01.resilience.circuit_breaker import CircuitBreaker
from sa01.resilience.fallback import ChainLink, FallbackChain

pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly:UserWarning")

CLIENTS = ("openai", "litellm")


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


@pytest.fixture
async def clients() -> AsyncIterator[OpenAIClients]:
    pool = OpenAIClients()
    try:
        yield pool
    finally:
        await pool.aclose()


def responder(
    kind: str, api_base: str, clients: OpenAIClients, *, timeout: float = 10.0
) -> ModelResponder:
    if kind == "openai":
        return OpenAIResponder(
            "openai/gpt-4o", api_base=api_base, api_key="sk-test", timeout=timeout, clients=clients
        )
    return LiteLLMResponder("openai/gpt-4o", api_base=api_base, api_key="sk-test", timeout=timeout)


def test_openai_models_go_through_the_openai_sdk_and_the_others_through_litellm() -> None:
    pool = OpenAIClients()
    openai = model_responder("openai/gpt-4o", api_base=None, api_key="k", timeout=1, clients=pool)
    claude = model_responder(
        "anthropic/claude-3-5-sonnet-latest", api_base=None, api_key="k", timeout=1, clients=pool
    )
    assert isinstance(openai, OpenAIResponder)
    assert isinstance(claude, LiteLLMResponder)


async def test_responders_of_one_endpoint_and_key_share_one_client(
    servers: tuple[LLMServer, LLMServer], clients: OpenAIClients
) -> None:
    primary, secondary = servers
    first = OpenAIResponder(
        "openai/gpt-4o", api_base=primary.openai_base_url, api_key="k", timeout=5, clients=clients
    )
    second = OpenAIResponder(
        "openai/gpt-4o-mini",
        api_base=primary.openai_base_url,
        api_key="k",
        timeout=5,
        clients=clients,
    )
    other = OpenAIResponder(
        "openai/gpt-4o", api_base=secondary.openai_base_url, api_key="k", timeout=5, clients=clients
    )

    answers = [await r.respond("hi", session_key="s") for r in (first, second, other)]

    assert [a.text for a in answers] == ["[primary] hi", "[primary] hi", "[secondary] hi"]
    assert [a.model for a in answers] == ["gpt-4o", "gpt-4o-mini", "gpt-4o"]
    shared = await clients.get(primary.openai_base_url, "k")
    assert shared is await clients.get(primary.openai_base_url, "k")
    assert shared is not await clients.get(secondary.openai_base_url, "k")
    assert primary.requests[0].body is not None
    assert primary.requests[0].body["model"] == "gpt-4o"


@pytest.mark.parametrize("kind", CLIENTS)
async def test_an_answered_call_logs_no_line(
    servers: tuple[LLMServer, LLMServer],
    clients: OpenAIClients,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, _ = servers
    model = responder(kind, primary.openai_base_url, clients)
    await model.respond("warm up", session_key="s")

    with caplog.at_level(logging.INFO):
        await model.respond("hello", session_key="s")

    server_side = ("aiohttp", "loopback")  # the loopback server runs in this process
    assert [r.getMessage() for r in caplog.records if not r.name.startswith(server_side)] == []


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_429_is_not_called_again_before_its_retry_after(
    servers: tuple[LLMServer, LLMServer], clients: OpenAIClients, kind: str
) -> None:
    primary, _ = servers
    primary.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=30)
    model = responder(kind, primary.openai_base_url, clients)

    with pytest.raises(RateLimitedError) as first:
        await model.respond("hello", session_key="s")
    with pytest.raises(RateLimitedError) as second:
        await model.respond("hello again", session_key="s")

    assert 29 <= first.value.retry_after <= 30
    assert second.value.retry_after <= 30
    assert primary.request_count == 1, "the rate-limited model was called again too early"


@pytest.mark.parametrize("kind", CLIENTS)
async def test_the_chain_fails_over_from_a_rate_limited_model_and_counts_the_switch(
    servers: tuple[LLMServer, LLMServer], clients: OpenAIClients, kind: str
) -> None:
    primary, secondary = servers
    primary.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=30)
    switches: list[tuple[str, str]] = []
    chain = FallbackChain(
        [
            ChainLink(
                "primary",
                responder(kind, primary.openai_base_url, clients),
                CircuitBreaker("primary"),
                10.0,
            ),
            ChainLink(
                "secondary",
                responder(kind, secondary.openai_base_url, clients),
                CircuitBreaker("secondary"),
                10.0,
            ),
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


# ------------------------------------------------------------------ one status at a time


def _openai_error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


CONTEXT = (
    "This model's maximum context length is 128000 tokens. However, your messages "
    "resulted in 130000 tokens. Please reduce the length of the messages."
)

#: status, OpenAI-shaped body, the error both clients must raise.
STATUS_CASES: dict[str, tuple[int, dict[str, Any], type[Exception]]] = {
    "400": (400, _openai_error("Invalid value", "invalid_request_error"), ProviderRequestError),
    "400-context": (
        400,
        _openai_error(CONTEXT, "invalid_request_error", "context_length_exceeded"),
        RequestTooLongError,
    ),
    "401": (
        401,
        _openai_error("Incorrect API key", "invalid_request_error"),
        ServiceUnavailableError,
    ),
    "403": (403, _openai_error("forbidden", "permission_error"), ServiceUnavailableError),
    "404": (
        404,
        _openai_error("no such model", "invalid_request_error", "model_not_found"),
        ServiceUnavailableError,
    ),
    "408": (408, _openai_error("timeout", "timeout"), ServiceUnavailableError),
    "413": (413, _openai_error("payload too large", "payload"), ProviderRequestError),
    "415": (415, _openai_error("unsupported media type", "unsupported"), ProviderRequestError),
    "422": (422, _openai_error("unprocessable", "unprocessable"), ProviderRequestError),
    "429": (429, _openai_error("Rate limit reached", "requests", "rate_limit"), RateLimitedError),
    "500": (500, _openai_error("The server had an error", "server_error"), ServiceUnavailableError),
    "502": (502, _openai_error("bad gateway", "server_error"), ServiceUnavailableError),
    "503": (503, _openai_error("overloaded", "server_error"), ServiceUnavailableError),
    "504": (504, _openai_error("gateway timeout", "server_error"), ServiceUnavailableError),
}


@dataclass
class StatusServer:
    """Answers every chat completion with one status and body (what the loopback LLM
    server has no mode for): 401, 403, 404, 408, 413, 415, 422, 502, 503, 504."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        headers = {"retry-after": "2"} if self.status == 429 else {}
        return web.json_response(self.body, status=self.status, headers=headers)


@pytest.fixture
async def status_server() -> AsyncIterator[StatusServer]:
    server = StatusServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    server.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()


def assert_maps(error: BaseException, expected: type[Exception]) -> None:
    """Exactly ``expected``: an outage is no RateLimitedError, a refusal no RequestTooLong."""
    assert type(error) is expected, repr(error)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("case", list(STATUS_CASES))
async def test_each_status_maps_to_the_same_error_through_either_client_with_one_request(
    status_server: StatusServer, clients: OpenAIClients, kind: str, case: str
) -> None:
    status_server.status, status_server.body, expected = STATUS_CASES[case]
    model = responder(kind, status_server.base_url, clients)

    with pytest.raises(expected) as caught:
        await model.respond("hello", session_key="s")

    assert_maps(caught.value, expected)
    assert status_server.requests == 1, "the SDK retried inside the client"
    if case in ("401", "403"):
        assert "credentials refused" in str(caught.value)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "mode", [FailureMode.REFUSE, FailureMode.HANG, FailureMode.ERROR_500, FailureMode.BAD_REQUEST]
)
async def test_loopback_failure_modes_map_the_same_through_either_client(
    servers: tuple[LLMServer, LLMServer], clients: OpenAIClients, kind: str, mode: FailureMode
) -> None:
    primary, _ = servers
    primary.set_mode(mode)
    model = responder(kind, primary.openai_base_url, clients, timeout=1.0)
    expected: type[Exception] = ServiceUnavailableError
    if mode is FailureMode.BAD_REQUEST:
        expected = RequestTooLongError

    with pytest.raises(expected) as caught:
        await asyncio.wait_for(model.respond("hello", session_key="s"), 10)

    assert_maps(caught.value, expected)
    assert primary.request_count == (0 if mode is FailureMode.REFUSE else 1)


async def test_an_openai_model_without_a_key_is_an_outage_without_a_request(
    servers: tuple[LLMServer, LLMServer], clients: OpenAIClients
) -> None:
    primary, _ = servers
    model = OpenAIResponder(
        "openai/gpt-4o", api_base=primary.openai_base_url, api_key=None, timeout=5, clients=clients
    )

    with pytest.raises(ServiceUnavailableError, match="credentials refused"):
        await model.respond("hello", session_key="s")

    assert primary.request_count == 0


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (FailureMode.ERROR_500, ServiceUnavailableError),
        (FailureMode.BAD_REQUEST, RequestTooLongError),
    ],
)
async def test_anthropic_through_litellm_maps_the_same_with_one_request(
    servers: tuple[LLMServer, LLMServer], mode: FailureMode, expected: type[Exception]
) -> None:
    primary, _ = servers
    primary.set_mode(mode)
    model = LiteLLMResponder(
        "anthropic/claude-3-5-sonnet-latest", api_base=primary.base_url, api_key="k", timeout=5
    )

    with pytest.raises(expected) as caught:
        await model.respond("hello", session_key="s")

    assert_maps(caught.value, expected)
    assert primary.request_count == 1
