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

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import json
import logging
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from types import FrameType, TracebackType
from typing import Any, Final, Literal, Self

from aiohttp import web

logger = logging.getLogger(__name__)

_Api = Literal["openai", "anthropic"]

_DEFAULT_HOST: Final = "127.0.0.1"
_START_TIMEOUT_SECONDS: Final = 10.0
_SHUTDOWN_TIMEOUT_SECONDS: Final = 2.0
_STREAM_CHUNKS: Final = 4
_OPENAI_CONTEXT_WINDOW: Final = 128_000
_ANTHROPIC_CONTEXT_WINDOW: Final = 200_000


class FailureMode(enum.StrEnum):
    """How the server answers LLM calls."""

    OK = "ok"
    """Answer normally."""
    ERROR_500 = "error_500"
    """500 with the API's server-error body."""
    RATE_LIMITED = "rate_limited"
    """429 with ``Retry-After`` (``retry_after_seconds``)."""
    HANG = "hang"
    """Read the request, then never answer until the mode changes or the server stops."""
    SLOW = "slow"
    """Answer normally after ``delay_seconds``."""
    REFUSE = "refuse"
    """Close the listening socket (connections are refused); other modes re-open the port."""
    BAD_REQUEST = "bad_request"
    """400 saying the context is too long (OpenAI code ``context_length_exceeded``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One LLM call received by the server (control and health endpoints are not recorded)."""

    path: str
    """The request path, e.g. ``/v1/chat/completions``."""
    body: dict[str, Any] | None
    """The JSON body, or None when it was not a JSON object."""
    headers: dict[str, str]
    """Request headers with lower-cased names."""
    received_at: float
    """``time.monotonic()`` when the request arrived."""
    mode: FailureMode
    """The failure mode in force when the request arrived."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Settings:
    mode: FailureMode = FailureMode.OK
    delay_seconds: float = 0.0
    retry_after_seconds: float = 1.0


class LLMServer:
    """A fake OpenAI + Anthropic HTTP server on a background thread with switchable failures.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with LLMServer(name="primary") as server:
            server.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=2)
            ...  # point clients at server.openai_base_url / server.base_url
    """

    def __init__(self, port: int = 0, name: str = "llm", *, host: str = _DEFAULT_HOST) -> None:
        """Create a stopped server; ``port=0`` picks a free port on :meth:`start`."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        self._host: Final = host
        self._port = port
        self._name: Final = name
        # State shared with callers on other threads.
        self._lock = threading.Lock()
        self._requests_changed = threading.Condition(self._lock)
        self._settings = _Settings()
        self._reply: str | None = None
        self._requests: list[RecordedRequest] = []
        # Lifecycle, guarded by _lifecycle.
        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Owned by the server's event loop.
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._listener_lock: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._revert: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start serving; returns once the port is bound (and listening unless in REFUSE)."""
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError(f"LLMServer {self._name!r} is already running")
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._run_loop, args=(loop,), name=f"LLMServer-{self._name}", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                asyncio.run_coroutine_threadsafe(self._astart(), loop).result(
                    _START_TIMEOUT_SECONDS
                )
            except BaseException:
                self._shutdown_thread()
                raise
        logger.info("LLM server %r listening on %s", self._name, self.base_url)

    def stop(self) -> None:
        """Stop serving, drop hanging requests and join the background thread (idempotent)."""
        with self._lifecycle:
            loop = self._loop
            if loop is None:
                return
            if threading.current_thread() is self._thread:
                raise RuntimeError("LLMServer.stop() cannot be called from the server thread")
            try:
                asyncio.run_coroutine_threadsafe(self._astop(), loop).result(
                    _SHUTDOWN_TIMEOUT_SECONDS + _START_TIMEOUT_SECONDS
                )
            finally:
                self._shutdown_thread()
        logger.info("LLM server %r stopped", self._name)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _shutdown_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_START_TIMEOUT_SECONDS)
        self._loop = self._thread = None

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _astart(self) -> None:
        self._stopping = False
        self._listener_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        runner = web.AppRunner(self._make_app(), shutdown_timeout=_SHUTDOWN_TIMEOUT_SECONDS)
        await runner.setup()
        try:
            # Bind even in REFUSE so that a port of 0 is resolved and kept for re-opening.
            site = web.SockSite(runner, self._bind_socket())
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        await self._sync_listener()

    async def _astop(self) -> None:
        self._stopping = True
        if self._revert is not None:
            self._revert.cancel()
            self._revert = None
        if self._stopped is not None:
            self._stopped.set()
        self._wake()
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    def _bind_socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        return sock

    async def _sync_listener(self) -> None:
        """Open or close the listening socket to match the current mode."""
        assert self._listener_lock is not None
        async with self._listener_lock:
            runner = self._runner
            if runner is None:
                return
            listen = not self._stopping and self._current().mode is not FailureMode.REFUSE
            if listen and self._site is None:
                site = web.SockSite(runner, self._bind_socket())
                await site.start()
                self._site = site
                logger.info("LLM server %r re-opened port %d", self._name, self._port)
            elif not listen and self._site is not None:
                site, self._site = self._site, None
                # Responses are sent with "Connection: close", so no idle kept-alive connection
                # survives this; requests still in flight finish according to the new mode.
                await site.stop()
                logger.info("LLM server %r closed port %d (refusing)", self._name, self._port)

    # ------------------------------------------------------------------ public API

    @property
    def name(self) -> str:
        """The name used in the default reply (``[name] ...``)."""
        return self._name

    @property
    def port(self) -> int:
        """The TCP port; known after :meth:`start` when constructed with 0."""
        if self._port == 0:
            raise RuntimeError("the port is chosen on start(); start the server first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (Anthropic clients append ``/v1/messages``)."""
        host = self._host
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(host)
            if address.is_unspecified:  # bound to all interfaces: connect via loopback
                host = "::1" if address.version == 6 else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``base_url + "/v1"``, the ``api_base`` OpenAI clients expect."""
        return self.base_url + "/v1"

    @property
    def mode(self) -> FailureMode:
        """The current failure mode."""
        return self._current().mode

    def set_mode(
        self,
        mode: FailureMode,
        *,
        delay_seconds: float = 0.0,
        retry_after_seconds: float = 1.0,
        revert_after_seconds: float | None = None,
    ) -> None:
        """Switch the failure mode (thread-safe); in effect when this returns.

        ``delay_seconds`` applies to SLOW, ``retry_after_seconds`` to RATE_LIMITED. With
        ``revert_after_seconds`` the server goes back to OK on its own after that long.
        Requests hanging in HANG are answered according to the new mode.
        """
        settings = _Settings(FailureMode(mode), float(delay_seconds), float(retry_after_seconds))
        if settings.delay_seconds < 0 or settings.retry_after_seconds < 0:
            raise ValueError("delay_seconds and retry_after_seconds must not be negative")
        if revert_after_seconds is not None and revert_after_seconds < 0:
            raise ValueError("revert_after_seconds must not be negative")
        if threading.current_thread() is self._thread:  # called from a handler on our loop
            self._spawn(self._apply(settings, revert_after_seconds))
            return
        with self._lifecycle:
            loop = self._loop
            if loop is None:
                if revert_after_seconds is not None:
                    raise RuntimeError("revert_after_seconds needs a running server")
                with self._lock:
                    self._settings = settings
                return
            asyncio.run_coroutine_threadsafe(
                self._apply(settings, revert_after_seconds), loop
            ).result(_START_TIMEOUT_SECONDS)

    def set_reply(self, text: str | None) -> None:
        """Fix the reply text; None restores the default ``[name] <last user message>``."""
        with self._lock:
            self._reply = text

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the LLM calls received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """How many LLM calls were received."""
        with self._lock:
            return len(self._requests)

    def reset_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` LLM calls were received; False on timeout."""
        with self._requests_changed:
            return self._requests_changed.wait_for(lambda: len(self._requests) >= count, timeout)

    # ------------------------------------------------------------------ mode handling

    def _current(self) -> _Settings:
        with self._lock:
            return self._settings

    async def _apply(self, settings: _Settings, revert_after: float | None) -> None:
        with self._lock:
            self._settings = settings
        if self._revert is not None:
            self._revert.cancel()
            self._revert = None
        if revert_after is not None:
            self._revert = asyncio.get_running_loop().call_later(revert_after, self._revert_now)
        logger.info(
            "LLM server %r mode=%s delay=%ss retry_after=%ss",
            self._name,
            settings.mode,
            settings.delay_seconds,
            settings.retry_after_seconds,
        )
        self._wake()
        await self._sync_listener()

    def _revert_now(self) -> None:
        self._revert = None
        self._spawn(self._apply(_Settings(), None))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _wake(self) -> None:
        """Wake everything waiting for a mode change (runs on the server loop)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _settle(self) -> _Settings | None:
        """Wait while the mode is HANG; None once the server is stopping."""
        while not self._stopping:
            settings = self._current()
            if settings.mode is not FailureMode.HANG:
                return settings
            assert self._changed is not None
            await self._changed.wait()
        return None

    async def _sleep(self, seconds: float) -> bool:
        """Sleep; True if the server started stopping meanwhile."""
        assert self._stopped is not None
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ HTTP

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.on_response_prepare.append(_close_after_response)
        app.router.add_post("/v1/chat/completions", self._handle_openai)
        app.router.add_post("/chat/completions", self._handle_openai)
        app.router.add_post("/v1/messages", self._handle_anthropic)
        app.router.add_post("/messages", self._handle_anthropic)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/_loopback/mode", self._handle_get_mode)
        app.router.add_post("/_loopback/mode", self._handle_set_mode)
        app.router.add_post("/_loopback/reply", self._handle_set_reply)
        return app

    async def _handle_openai(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "openai")

    async def _handle_anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "anthropic")

    async def _serve(self, request: web.Request, api: _Api) -> web.StreamResponse:
        body = await _read_json_object(request)
        self._record(request, body)
        settings = await self._settle()
        if settings is None or settings.mode is FailureMode.REFUSE:
            return _drop(request)
        if body is None:
            return _error(api, 400, "invalid_request", "The request body must be a JSON object.")
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
                    return _drop(request)
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

    def _record(self, request: web.Request, body: dict[str, Any] | None) -> None:
        record = RecordedRequest(
            path=request.path,
            body=body,
            headers={key.lower(): value for key, value in request.headers.items()},
            received_at=time.monotonic(),
            mode=self._current().mode,
        )
        with self._requests_changed:
            self._requests.append(record)
            self._requests_changed.notify_all()
        logger.debug("LLM server %r got %s in mode %s", self._name, record.path, record.mode)

    async def _handle_models(self, request: web.Request) -> web.Response:
        model = {"id": "loopback", "object": "model", "created": 0, "owned_by": self._name}
        return web.json_response({"object": "list", "data": [model]})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self._name})

    async def _handle_get_mode(self, request: web.Request) -> web.Response:
        return web.json_response(self._describe())

    async def _handle_set_mode(self, request: web.Request) -> web.Response:
        body = await _read_json_object(request)
        try:
            if body is None:
                raise ValueError("expected a JSON object")
            revert = body.get("revert_after_seconds")
            settings = _Settings(
                FailureMode(body["mode"]),
                float(body.get("delay_seconds", 0.0)),
                float(body.get("retry_after_seconds", 1.0)),
            )
            revert_after = None if revert is None else float(revert)
            if min(settings.delay_seconds, settings.retry_after_seconds, revert_after or 0) < 0:
                raise ValueError("durations must not be negative")
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f"bad mode request: {exc}"}, status=400)
        # REFUSE closes only the listening socket, so this connection can still answer.
        await self._apply(settings, revert_after)
        return web.json_response(self._describe())

    async def _handle_set_reply(self, request: web.Request) -> web.Response:
        body = await _read_json_object(request)
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


async def _read_json_object(request: web.Request) -> dict[str, Any] | None:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _close_after_response(request: web.Request, response: web.StreamResponse) -> None:
    """Disable keep-alive: a pooled connection would otherwise bypass REFUSE."""
    response.force_close()
    response.headers["Connection"] = "close"


def _drop(request: web.Request) -> web.Response:
    """Close the connection without an answer (the returned response is never sent)."""
    request.protocol.force_close()
    return web.Response(status=444)  # nginx-style "closed without response", for the log


def _request_id(api: _Api) -> str:
    return ("req_" if api == "anthropic" else "req-") + uuid.uuid4().hex


def _json(api: _Api, status: int, payload: dict[str, Any]) -> web.Response:
    header = "request-id" if api == "anthropic" else "x-request-id"
    return web.json_response(payload, status=status, headers={header: _request_id(api)})


_ErrorKind = Literal["server_error", "rate_limited", "context_length", "invalid_request"]


def _error(
    api: _Api, status: int, kind: _ErrorKind, message: str | None = None, *, retry: float = 0.0
) -> web.Response:
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
                    "message": f"This model's maximum context length is {_OPENAI_CONTEXT_WINDOW} "
                    f"tokens. However, your messages resulted in {_OPENAI_CONTEXT_WINDOW + 1} "
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
            f"prompt is too long: {_ANTHROPIC_CONTEXT_WINDOW + 1} tokens > "
            f"{_ANTHROPIC_CONTEXT_WINDOW} maximum",
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
    parser = argparse.ArgumentParser(
        prog="python -m loopback.llm_server",
        description="Fake OpenAI/Anthropic server; control it via POST /_loopback/mode.",
    )
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--name", default="llm")
    parser.add_argument("--host", default=_DEFAULT_HOST)
    parser.add_argument(
        "--mode", type=FailureMode, default=FailureMode.OK, choices=list(FailureMode)
    )
    parser.add_argument("--delay", type=float, default=0.0, help="SLOW delay in seconds")
    parser.add_argument("--retry-after", type=float, default=1.0, help="429 Retry-After seconds")
    parser.add_argument("--reply", default=None, help="fixed reply text (default: echo)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    server = LLMServer(args.port, args.name, host=args.host)
    server.set_mode(args.mode, delay_seconds=args.delay, retry_after_seconds=args.retry_after)
    server.set_reply(args.reply)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server.start()
    print(
        f"{args.name}: OpenAI at {server.openai_base_url}, Anthropic at {server.base_url}, "
        f"mode={server.mode}",
        flush=True,
    )
    try:
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop()
    print(f"{args.name}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
