"""The loopback LLM server, driven through real clients (litellm, httpx)."""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import litellm
import pytest
from litellm.exceptions import (
    APIConnectionError,
    ContextWindowExceededError,
    InternalServerError,
    RateLimitError,
)

from loopback import FailureMode, LLMServer

litellm.suppress_debug_info = True

pytestmark = [
    pytest.mark.timeout(60),
    # litellm builds a pydantic schema over a TypedDict with ReadOnly items on its first call;
    # pydantic warns about it and the project's filterwarnings turns warnings into errors.
    pytest.mark.filterwarnings("ignore:Item.*ReadOnly:UserWarning"),
]

OPENAI_MODEL = "openai/gpt-4o"
ANTHROPIC_MODEL = "anthropic/claude-3-5-sonnet-20241022"


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("LLMServer-")]


@pytest.fixture
def server() -> Iterator[LLMServer]:
    llm = LLMServer(name="primary")
    llm.start()
    try:
        yield llm
    finally:
        llm.stop()
        assert _server_threads() == []


def openai_call(server: LLMServer, text: str = "hello", **extra: Any) -> Any:
    return litellm.completion(
        model=OPENAI_MODEL,
        api_base=server.openai_base_url,
        api_key="sk-test",
        messages=[{"role": "user", "content": text}],
        num_retries=0,
        timeout=2,
        **extra,
    )


def anthropic_call(server: LLMServer, text: str = "hello", **extra: Any) -> Any:
    return litellm.completion(
        model=ANTHROPIC_MODEL,
        api_base=server.base_url,
        api_key="sk-ant-test",
        messages=[{"role": "user", "content": text}],
        num_retries=0,
        timeout=2,
        **extra,
    )


def chat_body(text: str = "hello") -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target`` in a thread; the dict gets ``result`` or ``error``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# ---------------------------------------------------------------------- OK


def test_ok_openai_through_litellm(server: LLMServer) -> None:
    response = openai_call(server, "ping from the test")

    assert response.choices[0].message.content == "[primary] ping from the test"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == 4
    assert response.usage.completion_tokens == 5
    [record] = server.requests
    assert record.path == "/v1/chat/completions"
    assert record.body is not None and record.body["model"] == "gpt-4o"
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.mode is FailureMode.OK


def test_ok_anthropic_through_litellm(server: LLMServer) -> None:
    response = anthropic_call(server, "hello claude")

    assert response.choices[0].message.content == "[primary] hello claude"
    assert response.usage.completion_tokens == 3
    [record] = server.requests
    assert record.path == "/v1/messages"  # litellm appends /v1/messages to api_base
    assert record.body is not None
    assert record.body["model"] == "claude-3-5-sonnet-20241022"
    assert record.headers["x-api-key"] == "sk-ant-test"


def test_openai_response_shape(server: LLMServer) -> None:
    response = httpx.post(f"{server.openai_base_url}/chat/completions", json=chat_body("a b"))

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "[primary] a b"}
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


@pytest.mark.parametrize("path", ["/v1/messages", "/messages"])
def test_anthropic_response_shape(server: LLMServer, path: str) -> None:
    request = {
        "model": "claude-x",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
    }
    response = httpx.post(server.base_url + path, json=request)

    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-x"
    assert body["content"] == [{"type": "text", "text": "[primary] hi there"}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"] == {"input_tokens": 2, "output_tokens": 3}


def test_set_reply_fixes_the_text_and_none_restores_the_echo(server: LLMServer) -> None:
    server.set_reply("fixed answer")
    assert openai_call(server, "x").choices[0].message.content == "fixed answer"
    assert anthropic_call(server, "x").choices[0].message.content == "fixed answer"

    server.set_reply(None)
    assert openai_call(server, "echo me").choices[0].message.content == "[primary] echo me"


def test_models_and_health_answer_and_are_not_recorded(server: LLMServer) -> None:
    server.set_mode(FailureMode.ERROR_500)

    health = httpx.get(f"{server.base_url}/health")
    models = httpx.get(f"{server.openai_base_url}/models")

    assert health.status_code == 200
    assert models.status_code == 200
    assert models.json()["object"] == "list"
    assert server.request_count == 0


def test_a_body_that_is_not_json_is_a_400(server: LLMServer) -> None:
    response = httpx.post(f"{server.openai_base_url}/chat/completions", content=b"{not json")

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert server.requests[0].body is None


# ---------------------------------------------------------------------- error modes


def test_error_500_through_litellm(server: LLMServer) -> None:
    server.set_mode(FailureMode.ERROR_500)

    with pytest.raises(InternalServerError) as raised:
        openai_call(server)

    assert raised.value.status_code == 500
    assert server.request_count == 1  # no hidden client retries
    assert server.requests[0].mode is FailureMode.ERROR_500


def test_error_500_bodies_have_each_apis_shape(server: LLMServer) -> None:
    server.set_mode(FailureMode.ERROR_500)

    openai = httpx.post(f"{server.openai_base_url}/chat/completions", json=chat_body())
    anthropic = httpx.post(f"{server.base_url}/v1/messages", json=chat_body())

    assert openai.status_code == anthropic.status_code == 500
    assert openai.json()["error"]["type"] == "server_error"
    assert anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "api_error"


def test_error_500_through_litellm_anthropic(server: LLMServer) -> None:
    server.set_mode(FailureMode.ERROR_500)

    with pytest.raises(InternalServerError):
        anthropic_call(server)

    assert server.request_count == 1


def test_rate_limited_through_litellm(server: LLMServer) -> None:
    server.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=3)

    with pytest.raises(RateLimitError) as raised:
        openai_call(server)

    assert raised.value.status_code == 429
    assert server.request_count == 1


def test_rate_limited_sends_retry_after(server: LLMServer) -> None:
    server.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=7)

    openai = httpx.post(f"{server.openai_base_url}/chat/completions", json=chat_body())
    anthropic = httpx.post(f"{server.base_url}/v1/messages", json=chat_body())

    assert openai.status_code == anthropic.status_code == 429
    assert openai.headers["retry-after"] == anthropic.headers["retry-after"] == "7"
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"
    assert anthropic.json()["error"]["type"] == "rate_limit_error"


def test_rate_limited_through_litellm_anthropic(server: LLMServer) -> None:
    server.set_mode(FailureMode.RATE_LIMITED)

    with pytest.raises(RateLimitError):
        anthropic_call(server)


def test_bad_request_is_a_context_window_error(server: LLMServer) -> None:
    server.set_mode(FailureMode.BAD_REQUEST)

    raw = httpx.post(f"{server.openai_base_url}/chat/completions", json=chat_body())
    with pytest.raises(ContextWindowExceededError):
        openai_call(server)
    with pytest.raises(ContextWindowExceededError):
        anthropic_call(server)

    assert raw.status_code == 400
    assert raw.json()["error"]["code"] == "context_length_exceeded"
    assert server.request_count == 3


# ---------------------------------------------------------------------- HANG


def test_hang_times_out_the_client_and_ok_answers_again(server: LLMServer) -> None:
    server.set_mode(FailureMode.HANG)

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.openai_base_url}/chat/completions", json=chat_body(), timeout=0.5)
    assert httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200  # not blocked

    server.set_mode(FailureMode.OK)
    response = httpx.post(
        f"{server.openai_base_url}/chat/completions", json=chat_body("after"), timeout=2
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "[primary] after"


def test_hanging_requests_do_not_block_each_other_and_are_answered_after_the_switch(
    server: LLMServer,
) -> None:
    server.set_mode(FailureMode.HANG)
    url = f"{server.openai_base_url}/chat/completions"

    def post(text: str) -> Callable[[], httpx.Response]:
        return lambda: httpx.post(url, json=chat_body(text), timeout=10)

    calls = [in_thread(post("one")), in_thread(post("two"))]
    assert server.wait_for_requests(2, timeout=5)
    time.sleep(0.2)
    assert all(thread.is_alive() for thread, _ in calls)

    server.set_mode(FailureMode.OK)
    for thread, _ in calls:
        thread.join(5)
    answers = {outcome["result"].json()["choices"][0]["message"]["content"] for _, outcome in calls}
    assert answers == {"[primary] one", "[primary] two"}


def test_stop_releases_hanging_requests() -> None:
    llm = LLMServer(name="hangs")
    llm.start()
    llm.set_mode(FailureMode.HANG)
    url = f"{llm.openai_base_url}/chat/completions"
    thread, outcome = in_thread(lambda: httpx.post(url, json=chat_body(), timeout=10))
    assert llm.wait_for_requests(1, timeout=5)

    started = time.monotonic()
    llm.stop()
    thread.join(5)

    assert time.monotonic() - started < 5
    assert isinstance(outcome.get("error"), httpx.TransportError)  # dropped, never answered
    assert _server_threads() == []


# ---------------------------------------------------------------------- SLOW


def test_slow_answers_after_the_delay(server: LLMServer) -> None:
    server.set_mode(FailureMode.SLOW, delay_seconds=0.4)

    started = time.monotonic()
    response = openai_call(server, "take your time")
    elapsed = time.monotonic() - started

    assert response.choices[0].message.content == "[primary] take your time"
    assert elapsed >= 0.4


def test_slow_beyond_the_client_timeout_is_a_timeout(server: LLMServer) -> None:
    server.set_mode(FailureMode.SLOW, delay_seconds=1.5)

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.openai_base_url}/chat/completions", json=chat_body(), timeout=0.3)


# ---------------------------------------------------------------------- REFUSE


def test_refuse_closes_the_port_and_ok_reopens_the_same_port(server: LLMServer) -> None:
    url = f"{server.base_url}/health"
    port = server.port
    with httpx.Client(timeout=2) as pooled:
        assert pooled.get(url).status_code == 200

        server.set_mode(FailureMode.REFUSE)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=2)
        with pytest.raises(httpx.ConnectError):  # a pooled connection does not get through
            pooled.get(url)

        server.set_mode(FailureMode.OK)
        assert server.port == port
        assert pooled.get(url).status_code == 200
    assert openai_call(server, "back").choices[0].message.content == "[primary] back"


def test_refuse_through_litellm_is_a_connection_error(server: LLMServer) -> None:
    server.set_mode(FailureMode.REFUSE)

    # litellm reports a refused connection as "Connection error." (it maps the openai SDK's
    # APIConnectionError to an InternalServerError with status 500).
    with pytest.raises((APIConnectionError, InternalServerError)) as raised:
        openai_call(server)

    assert "Connection error" in str(raised.value)

    assert server.request_count == 0


def test_refuse_before_start_still_reserves_a_port() -> None:
    llm = LLMServer(name="late")
    llm.set_mode(FailureMode.REFUSE)
    llm.start()
    try:
        assert llm.port > 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{llm.base_url}/health", timeout=2)
        llm.set_mode(FailureMode.OK)
        assert httpx.get(f"{llm.base_url}/health", timeout=2).status_code == 200
    finally:
        llm.stop()


# ---------------------------------------------------------------------- streaming


def test_streaming_through_litellm(server: LLMServer) -> None:
    stream = openai_call(server, "one two three four five six", stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream]
    text = "".join(piece for piece in pieces if piece)

    assert text == "[primary] one two three four five six"
    assert len([piece for piece in pieces if piece]) > 1
    assert server.requests[0].body is not None
    assert server.requests[0].body["stream"] is True


def test_streaming_sse_wire_format(server: LLMServer) -> None:
    body = {**chat_body("a b c d e"), "stream": True}
    response = httpx.post(f"{server.openai_base_url}/chat/completions", json=body)

    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert '"object": "chat.completion.chunk"' in lines[0]


def test_streaming_anthropic_through_litellm(server: LLMServer) -> None:
    stream = anthropic_call(server, "stream it to me please", stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert text == "[primary] stream it to me please"


# ---------------------------------------------------------------------- recording


def test_requests_are_recorded_in_order_and_can_be_reset(server: LLMServer) -> None:
    before = time.monotonic()
    openai_call(server, "first")
    server.set_mode(FailureMode.ERROR_500)
    with pytest.raises(InternalServerError):
        anthropic_call(server, "second")

    first, second = server.requests
    assert (first.path, second.path) == ("/v1/chat/completions", "/v1/messages")
    assert (first.mode, second.mode) == (FailureMode.OK, FailureMode.ERROR_500)
    assert before <= first.received_at <= second.received_at <= time.monotonic()
    assert first.body is not None and first.body["messages"][-1]["content"] == "first"
    assert server.request_count == 2

    records = server.requests
    records.clear()  # a copy: the server's list is untouched
    assert server.request_count == 2
    server.reset_requests()
    assert server.request_count == 0
    assert server.requests == []


# ---------------------------------------------------------------------- control and lifecycle


def test_control_endpoint_switches_modes_and_reverts(server: LLMServer) -> None:
    control = f"{server.base_url}/_loopback/mode"
    answer = httpx.post(control, json={"mode": "rate_limited", "retry_after_seconds": 2})
    assert answer.json()["mode"] == "rate_limited"
    assert server.mode.value == "rate_limited"

    httpx.post(control, json={"mode": "refuse", "revert_after_seconds": 3.0})
    time.sleep(0.1)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/health", timeout=2)
    assert wait_until(lambda: httpx.get(control, timeout=2).json()["mode"] == "ok", timeout=15.0)
    assert server.mode is FailureMode.OK
    assert httpx.post(control, json={"mode": "nonsense"}).status_code == 400


def test_context_manager_and_fixed_port_restart() -> None:
    with LLMServer(name="ctx") as llm:
        port = llm.port
        assert llm.base_url == f"http://127.0.0.1:{port}"
        assert llm.openai_base_url == f"http://127.0.0.1:{port}/v1"
        assert len(_server_threads()) == 1
    assert _server_threads() == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)

    with LLMServer(port=port, name="again") as again:
        assert httpx.get(f"{again.base_url}/health", timeout=2).json()["name"] == "again"
    again.stop()  # idempotent
    assert _server_threads() == []
