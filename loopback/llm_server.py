"""A controllable fake LLM provider: OpenAI chat completions and Anthropic messages over HTTP.

The server runs an aiohttp application on its own event loop in a background thread, so both
synchronous code (pytest) and async code can drive it. A :class:`FailureMode` decides how LLM
calls are answered; it can be changed at any time with :meth:`LLMServer.set_mode`.

Endpoints:

* ``POST /v1/chat/completions`` (also ``/chat/completions``): OpenAI shape, ``"stream": true``
  answers with ``chat.completion.chunk`` server-sent events and ``data: [DONE]``.
* ``POST /v1/messages`` (also ``/messages``): Anthropic shape, ``"stream": true`` answers with
  Anthropic's ``message_start`` ... ``message_stop`` events.
* ``GET /v1/models`` and ``GET /health``: always 200 while the server listens.
* ``GET /_loopback/mode``, ``POST /_loopback/mode``, ``POST /_loopback/reply``: control
  endpoints for out-of-process use (``python -m loopback.llm_server``).

Run one in the foreground with ``python -m loopback.llm_server --port 8001 --name primary``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, Final, Literal

from aiohttp import web

from loopback._server import (
    DEFAULT_HOST,
    ProviderServer,
    ProviderSettings,
    add_mode_arguments,
    cli_parser,
    drop,
    parse_cli_args,
    read_json_object,
    serve_until_signalled,
)
from loopback._server import FailureMode as FailureMode
from loopback._server import RecordedRequest as RecordedRequest

logger = logging.getLogger(__name__)

_Api = Literal["openai", "anthropic"]

_STREAM_CHUNKS: Final = 4
_OPENAI_CONTEXT_WINDOW: Final = 128_000
_ANTHROPIC_CONTEXT_WINDOW: Final = 200_000


class LLMServer(ProviderServer):
    """A fake OpenAI + Anthropic HTTP server on a background thread with switchable failures.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with LLMServer(name="primary") as server:
            server.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=2)
            ...  # point clients at server.openai_base_url / server.base_url

    Its :attr:`name` starts the default reply (``[name] ...``). Only LLM calls are recorded in
    :attr:`requests`; ``/v1/models`` and ``/health`` are not. Anthropic clients take
    :attr:`base_url` and append ``/v1/messages``.
    """

    _title: ClassVar[str] = "LLMServer"
    _label: ClassVar[str] = "LLM server"
    _logger: ClassVar[logging.Logger] = logger
    _client_max_size: ClassVar[int] = 64 * 1024 * 1024

    def __init__(
        self,
        port: int = 0,
        name: str = "llm",
        *,
        host: str = DEFAULT_HOST,
        context_window_tokens: int | None = None,
    ) -> None:
        """Create a stopped server; ``port=0`` picks a free port on :meth:`start`.

        With ``context_window_tokens`` a prompt longer than that is refused as the real
        APIs refuse it: 400 ``context_length_exceeded`` (OpenAI), ``prompt is too long``
        (Anthropic), whatever the failure mode.
        """
        super().__init__(port, name, host=host, default_settings=ProviderSettings())
        self._reply: str | None = None
        self._context_window = context_window_tokens

    # ------------------------------------------------------------------ public API

    @property
    def openai_base_url(self) -> str:
        """``base_url + "/v1"``, the ``api_base`` OpenAI clients expect."""
        return self.base_url + "/v1"

    def set_reply(self, text: str | None) -> None:
        """Fix the reply text; None restores the default ``[name] <last user message>``."""
        with self._lock:
            self._reply = text

    # ------------------------------------------------------------------ HTTP

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self._handle_openai)
        router.add_post("/chat/completions", self._handle_openai)
        router.add_post("/v1/messages", self._handle_anthropic)
        router.add_post("/messages", self._handle_anthropic)
        router.add_get("/v1/models", self._handle_models)
        router.add_get("/health", self._handle_health)
        router.add_post("/_loopback/reply", self._handle_set_reply)

    async def _handle_openai(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "openai")

    async def _handle_anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "anthropic")

    async def _serve(self, request: web.Request, api: _Api) -> web.StreamResponse:
        _, body = await self._receive(request)
        settings = await self._settle()
        if settings is None or settings.mode is FailureMode.REFUSE:
            return drop(request)
        if body is None:
            return _error(api, 400, "invalid_request", "The request body must be a JSON object.")
        if self._context_window is not None:
            tokens = _prompt_tokens(body)
            if tokens > self._context_window:
                return _error(
                    api, 400, "context_length", window=self._context_window, tokens=tokens
                )
        match settings.mode:
            case FailureMode.ERROR_500:
                return _error(api, 500, "server_error")
            case FailureMode.RATE_LIMITED:
                response = _error(api, 429, "rate_limited", retry=settings.retry_after_seconds)
                response.headers["Retry-After"] = f"{settings.retry_after_seconds:g}"
                response.headers["retry-after-ms"] = str(round(settings.retry_after_seconds * 1000))
                return response
            case FailureMode.BAD_REQUEST:
                return _error(api, 400, "context_length")
            case FailureMode.SLOW:
                if await self._sleep(settings.delay_seconds):
                    return drop(request)
            case _:
                pass
        with self._lock:
            fixed_reply = self._reply
        text = fixed_reply if fixed_reply is not None else f"[{self._name}] {_last_user_text(body)}"
        model = str(body.get("model") or "loopback")
        prompt_tokens = _prompt_tokens(body)
        if body.get("stream") is True:
            if api == "openai":
                include_usage = _include_usage(body)
                events = _openai_stream(model, text, prompt_tokens, include_usage=include_usage)
            else:
                events = _anthropic_stream(model, text, prompt_tokens)
            return await _send_events(request, api, events)
        if api == "openai":
            return _json(api, 200, _openai_completion(model, text, prompt_tokens))
        return _json(api, 200, _anthropic_message(model, text, prompt_tokens))

    async def _handle_models(self, request: web.Request) -> web.Response:
        model = {"id": "loopback", "object": "model", "created": 0, "owned_by": self._name}
        return web.json_response({"object": "list", "data": [model]})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self._name})

    async def _handle_set_reply(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        text = None if body is None else body.get("text")
        if body is None or not (text is None or isinstance(text, str)):
            return web.json_response({"error": "expected {'text': str | null}"}, status=400)
        self.set_reply(text)
        return web.json_response({"text": text})

    def _describe(self) -> dict[str, Any]:
        settings = self._current()
        return {
            "name": self._name,
            "mode": settings.mode.value,
            "delay_seconds": settings.delay_seconds,
            "retry_after_seconds": settings.retry_after_seconds,
            "request_count": self.request_count,
        }


# ---------------------------------------------------------------------- wire helpers


def _request_id(api: _Api) -> str:
    return ("req_" if api == "anthropic" else "req-") + uuid.uuid4().hex


def _json(api: _Api, status: int, payload: dict[str, Any]) -> web.Response:
    header = "request-id" if api == "anthropic" else "x-request-id"
    return web.json_response(payload, status=status, headers={header: _request_id(api)})


_ErrorKind = Literal["server_error", "rate_limited", "context_length", "invalid_request"]


def _error(
    api: _Api,
    status: int,
    kind: _ErrorKind,
    message: str | None = None,
    *,
    retry: float = 0.0,
    window: int | None = None,
    tokens: int | None = None,
) -> web.Response:
    openai_window = window or _OPENAI_CONTEXT_WINDOW
    anthropic_window = window or _ANTHROPIC_CONTEXT_WINDOW
    if api == "openai":
        error: dict[str, Any]
        match kind:
            case "server_error":
                error = {
                    "message": "The server had an error while processing your request. "
                    "Sorry about that!",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            case "rate_limited":
                error = {
                    "message": f"Rate limit reached for requests. Please try again in {retry:g}s.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            case "context_length":
                error = {
                    "message": f"This model's maximum context length is {openai_window} "
                    f"tokens. However, your messages resulted in {tokens or openai_window + 1} "
                    "tokens. Please reduce the length of the messages.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            case "invalid_request":
                error = {
                    "message": message or "Invalid request.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
        return _json(api, status, {"error": error})
    anthropic_type, anthropic_message = {
        "server_error": ("api_error", "Internal server error"),
        "rate_limited": (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization. "
            f"Please retry after {retry:g} seconds.",
        ),
        "context_length": (
            "invalid_request_error",
            f"prompt is too long: {tokens or anthropic_window + 1} tokens > "
            f"{anthropic_window} maximum",
        ),
        "invalid_request": ("invalid_request_error", message or "Invalid request."),
    }[kind]
    request_id = _request_id(api)
    payload = {
        "type": "error",
        "error": {"type": anthropic_type, "message": anthropic_message},
        "request_id": request_id,
    }
    return web.json_response(payload, status=status, headers={"request-id": request_id})


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
    return ""


def _count_tokens(text: str) -> int:
    """A rough token estimate: whitespace-separated words."""
    return len(text.split())


def _prompt_tokens(body: dict[str, Any]) -> int:
    texts = [_text_of(body.get("system"))]
    messages = body.get("messages")
    if isinstance(messages, list):
        texts += [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
    return max(1, sum(_count_tokens(text) for text in texts))


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _split(text: str, parts: int = _STREAM_CHUNKS) -> list[str]:
    """Split ``text`` into at most ``parts`` word-aligned pieces that join back to ``text``."""
    words = re.findall(r"\s*\S+\s*|\s+", text)
    if not words:
        return []
    per_part = -(-len(words) // parts)
    return ["".join(words[i : i + per_part]) for i in range(0, len(words), per_part)]


def _openai_completion(model: str, text: str, prompt_tokens: int) -> dict[str, Any]:
    completion_tokens = _count_tokens(text)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _openai_stream(
    model: str, text: str, prompt_tokens: int, *, include_usage: bool
) -> list[tuple[str | None, dict[str, Any]]]:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    chunks += [chunk({"content": piece}, None) for piece in _split(text)]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        completion_tokens = _count_tokens(text)
        usage_chunk = chunk({}, None)
        usage_chunk["choices"] = []
        usage_chunk["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        chunks.append(usage_chunk)
    return [(None, c) for c in chunks]


def _anthropic_message(model: str, text: str, prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": _count_tokens(text)},
    }


def _anthropic_stream(
    model: str, text: str, prompt_tokens: int
) -> list[tuple[str | None, dict[str, Any]]]:
    message = _anthropic_message(model, "", prompt_tokens)
    message.update(content=[], stop_reason=None)
    message["usage"] = {"input_tokens": prompt_tokens, "output_tokens": 1}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in _split(text)
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": _count_tokens(text)},
        },
        {"type": "message_stop"},
    ]
    return [(event["type"], event) for event in events]


async def _send_events(
    request: web.Request, api: _Api, events: Sequence[tuple[str | None, dict[str, Any]]]
) -> web.StreamResponse:
    header = "request-id" if api == "anthropic" else "x-request-id"
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            header: _request_id(api),
        },
    )
    await response.prepare(request)
    for event_name, data in events:
        prefix = f"event: {event_name}\n" if event_name is not None else ""
        await response.write(f"{prefix}data: {json.dumps(data)}\n\n".encode())
    if api == "openai":
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


# ---------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run one server in the foreground until SIGINT or SIGTERM."""
    parser = cli_parser(
        "python -m loopback.llm_server",
        "Fake OpenAI/Anthropic server; control it via POST /_loopback/mode.",
        port=8001,
        name="llm",
    )
    add_mode_arguments(parser, list(FailureMode))
    parser.add_argument("--retry-after", type=float, default=1.0, help="429 Retry-After seconds")
    parser.add_argument("--reply", default=None, help="fixed reply text (default: echo)")
    args = parse_cli_args(parser, argv)

    server = LLMServer(args.port, args.name, host=args.host)
    server.set_mode(args.mode, delay_seconds=args.delay, retry_after_seconds=args.retry_after)
    server.set_reply(args.reply)
    return serve_until_signalled(
        server,
        args.name,
        lambda: (
            f"{args.name}: OpenAI at {server.openai_base_url}, Anthropic at {server.base_url}, "
            f"mode={server.mode}"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
