"""The plumbing shared by the loopback servers (private; import the servers from :mod:`loopback`).

:class:`LoopbackServer` runs an aiohttp application on its own event loop in a background thread,
so both synchronous code (pytest) and async code can drive it. It owns the lifecycle (start, stop,
context manager), the listening socket on a port that survives REFUSE (closed in REFUSE, re-opened
on the same port by any other mode), mode switching that is in effect when ``set_mode`` returns,
HANG and SLOW waiting, the request log and the ``/_loopback/mode`` control endpoint.
Connections are kept alive, as the real services' servers (uvicorn) keep them; entering REFUSE
closes them, as a stopped server's end. Subclasses add their routes, their own state and what
``/_loopback/mode`` reports.

:class:`FailureMode` and :class:`RecordedRequest` live here so that every server shares one copy of
them even when a server module runs as ``__main__``; :mod:`loopback.llm_server` re-exports them.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType, TracebackType
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar

from aiohttp import web

DEFAULT_HOST: Final = "127.0.0.1"
START_TIMEOUT_SECONDS: Final = 10.0
SHUTDOWN_TIMEOUT_SECONDS: Final = 2.0


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


class ModeSettings(Protocol):
    """What the base class needs of a server's settings: an immutable value with a mode.

    ``str(settings)`` is what a mode change logs after the server's name.
    """

    @property
    def mode(self) -> FailureMode: ...


_S = TypeVar("_S", bound=ModeSettings)


class LoopbackServer(abc.ABC, Generic[_S]):
    """An aiohttp server on a background thread whose failure mode can be switched at run time.

    Subclasses set the class attributes, implement :meth:`_add_routes`, :meth:`_describe` and
    :meth:`_read_mode_request`, and offer a typed ``set_mode`` that calls :meth:`_change_mode`.
    """

    _title: ClassVar[str] = "LoopbackServer"
    """The class name in thread names and error messages."""
    _label: ClassVar[str] = "loopback server"
    """How log messages name the server, e.g. ``LLM server``."""
    _logger: ClassVar[logging.Logger] = logging.getLogger(__name__)
    _client_max_size: ClassVar[int] = 16 * 1024 * 1024
    """The largest request body accepted."""

    def __init__(self, port: int, name: str, *, host: str, default_settings: _S) -> None:
        """Create a stopped server; ``port=0`` picks a free port on :meth:`start`.

        ``default_settings`` are in force at first and whenever ``revert_after_seconds`` runs out.
        """
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        self._host: Final = host
        self._port = port
        self._name: Final = name
        self._default_settings: Final = default_settings
        # State shared with callers on other threads.
        self._lock = threading.Lock()
        self._requests_changed = threading.Condition(self._lock)
        self._settings: _S = default_settings
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
                raise RuntimeError(f"{self._title} {self._name!r} is already running")
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._run_loop,
                args=(loop,),
                name=f"{self._title}-{self._name}",
                daemon=True,
            )
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                asyncio.run_coroutine_threadsafe(self._astart(), loop).result(START_TIMEOUT_SECONDS)
            except BaseException:
                self._shutdown_thread()
                raise
        self._logger.info("%s %r listening on %s", self._label, self._name, self.base_url)

    def stop(self) -> None:
        """Stop serving, drop hanging requests and join the background thread (idempotent)."""
        with self._lifecycle:
            loop = self._loop
            if loop is None:
                return
            if threading.current_thread() is self._thread:
                raise RuntimeError(f"{self._title}.stop() cannot be called from the server thread")
            try:
                asyncio.run_coroutine_threadsafe(self._astop(), loop).result(
                    SHUTDOWN_TIMEOUT_SECONDS + START_TIMEOUT_SECONDS
                )
            finally:
                self._shutdown_thread()
        self._logger.info("%s %r stopped", self._label, self._name)

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
            thread.join(START_TIMEOUT_SECONDS)
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
        runner = web.AppRunner(self._make_app(), shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
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
                self._logger.info("%s %r re-opened port %d", self._label, self._name, self._port)
            elif not listen and self._site is not None:
                site, self._site = self._site, None
                await site.stop()
                # As a stopped server's would, kept-alive connections end too: idle ones at
                # once, those with a request in flight once it is answered (by the new mode).
                for connection in list(runner.server.connections if runner.server else ()):
                    # aiohttp names no public "busy" flag: a handler without the private
                    # one (another aiohttp) counts as idle and is closed at once.
                    if getattr(connection, "_request_in_progress", False):
                        connection.close()
                    else:
                        connection.force_close()
                await asyncio.sleep(0)  # the closed sockets' connection_lost callbacks run
                self._logger.info(
                    "%s %r closed port %d (refusing)", self._label, self._name, self._port
                )

    # ------------------------------------------------------------------ public API

    @property
    def name(self) -> str:
        """The server's name (thread name and logs)."""
        return self._name

    @property
    def port(self) -> int:
        """The TCP port; known after :meth:`start` when constructed with 0."""
        if self._port == 0:
            raise RuntimeError("the port is chosen on start(); start the server first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``, the base URL to give clients (a wildcard host via loopback)."""
        return http_base_url(self._host, self.port)

    @property
    def mode(self) -> FailureMode:
        """The current failure mode."""
        return self._current().mode

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far (control endpoints excluded), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """How many requests were received (control endpoints excluded)."""
        with self._lock:
            return len(self._requests)

    @property
    def open_connections(self) -> int:
        """Client connections open right now (kept alive or with a request in flight)."""
        loop = self._loop
        if loop is None:
            return 0

        async def count() -> int:
            runner = self._runner
            return len(runner.server.connections) if runner and runner.server else 0

        return asyncio.run_coroutine_threadsafe(count(), loop).result(START_TIMEOUT_SECONDS)

    def reset_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` requests were received; False on timeout."""
        with self._requests_changed:
            return self._requests_changed.wait_for(lambda: len(self._requests) >= count, timeout)

    # ------------------------------------------------------------------ mode handling

    def _change_mode(self, settings: _S, revert_after_seconds: float | None) -> None:
        """Put validated ``settings`` in force (thread-safe); in effect when this returns."""
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
            ).result(START_TIMEOUT_SECONDS)

    def _current(self) -> _S:
        with self._lock:
            return self._settings

    async def _apply(self, settings: _S, revert_after: float | None) -> None:
        with self._lock:
            self._settings = settings
        if self._revert is not None:
            self._revert.cancel()
            self._revert = None
        if revert_after is not None:
            self._revert = asyncio.get_running_loop().call_later(revert_after, self._revert_now)
        self._logger.info("%s %r %s", self._label, self._name, settings)
        self._wake()
        await self._sync_listener()

    def _revert_now(self) -> None:
        self._revert = None
        self._spawn(self._apply(self._default_settings, None))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _wake(self) -> None:
        """Wake everything waiting for a mode change (runs on the server loop)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _settle(self) -> _S | None:
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
        app = web.Application(client_max_size=self._client_max_size)
        self._add_routes(app.router)
        app.router.add_get("/_loopback/mode", self._handle_get_mode)
        app.router.add_post("/_loopback/mode", self._handle_set_mode)
        return app

    @abc.abstractmethod
    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """Add the routes of the faked service (the control endpoints are added by the base)."""

    async def _receive(self, request: web.Request) -> tuple[bytes, dict[str, Any] | None]:
        """Read the body and record the request; the raw body and its JSON object (or None)."""
        raw = await request.read()
        body = json_object(raw)
        self._record(request, body)
        return raw, body

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
            self._on_record(record)
            self._requests_changed.notify_all()
        self._logger.debug(
            "%s %r got %s in mode %s", self._label, self._name, record.path, record.mode
        )

    def _on_record(self, record: RecordedRequest) -> None:
        """Count ``record`` in the subclass's own state (called with the lock held)."""

    async def _handle_get_mode(self, request: web.Request) -> web.Response:
        return web.json_response(self._describe())

    async def _handle_set_mode(self, request: web.Request) -> web.Response:
        try:
            settings, revert_after = await self._read_mode_request(request)
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f"bad mode request: {exc}"}, status=400)
        # REFUSE closes only the listening socket, so this connection can still answer.
        await self._apply(settings, revert_after)
        return web.json_response(self._describe())

    @abc.abstractmethod
    async def _read_mode_request(self, request: web.Request) -> tuple[_S, float | None]:
        """The settings and ``revert_after_seconds`` a ``POST /_loopback/mode`` asks for.

        Raises KeyError, TypeError or ValueError for a bad request (answered with 400).
        """

    @abc.abstractmethod
    def _describe(self) -> dict[str, Any]:
        """The body of ``GET /_loopback/mode`` (and of a successful ``POST``)."""


# ---------------------------------------------------------------------- provider servers


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderSettings:
    """The mode of a provider API server, with SLOW's delay and RATE_LIMITED's Retry-After."""

    mode: FailureMode = FailureMode.OK
    delay_seconds: float = 0.0
    retry_after_seconds: float = 1.0

    def __str__(self) -> str:
        return (
            f"mode={self.mode} delay={self.delay_seconds}s retry_after={self.retry_after_seconds}s"
        )


class ProviderServer(LoopbackServer[ProviderSettings]):
    """A loopback server for a provider API (LLM, audio): :meth:`set_mode` and its control
    endpoint take a mode, ``delay_seconds`` and ``retry_after_seconds``."""

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
        settings = ProviderSettings(
            FailureMode(mode), float(delay_seconds), float(retry_after_seconds)
        )
        if settings.delay_seconds < 0 or settings.retry_after_seconds < 0:
            raise ValueError("delay_seconds and retry_after_seconds must not be negative")
        self._change_mode(settings, revert_after_seconds)

    async def _read_mode_request(
        self, request: web.Request
    ) -> tuple[ProviderSettings, float | None]:
        body = await read_json_object(request)
        if body is None:
            raise ValueError("expected a JSON object")
        settings = ProviderSettings(
            FailureMode(body["mode"]),
            float(body.get("delay_seconds", 0.0)),
            float(body.get("retry_after_seconds", 1.0)),
        )
        revert_after = revert_after_of(body)
        if min(settings.delay_seconds, settings.retry_after_seconds, revert_after or 0) < 0:
            raise ValueError("durations must not be negative")
        return settings, revert_after


# ---------------------------------------------------------------------- wire helpers


def http_base_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` for clients; a wildcard host is reached through loopback."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:  # bound to all interfaces: connect via loopback
            host = "::1" if address.version == 6 else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` parsed as JSON if it is an object, else None."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def read_json_object(request: web.Request) -> dict[str, Any] | None:
    """The request body if it is a JSON object, else None."""
    return json_object(await request.read())


def revert_after_of(body: dict[str, Any]) -> float | None:
    """``revert_after_seconds`` of a ``POST /_loopback/mode`` body."""
    revert = body.get("revert_after_seconds")
    return None if revert is None else float(revert)


def drop(request: web.Request) -> web.Response:
    """Close the connection without an answer (the returned response is never sent)."""
    request.protocol.force_close()
    return web.Response(status=444)  # nginx-style "closed without response", for the log


# ---------------------------------------------------------------------- CLI


def cli_parser(prog: str, description: str, *, port: int, name: str) -> argparse.ArgumentParser:
    """A parser with ``--port``, ``--name`` and ``--host``; see :func:`add_mode_arguments`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--name", default=name)
    parser.add_argument("--host", default=DEFAULT_HOST)
    return parser


def add_mode_arguments(parser: argparse.ArgumentParser, modes: Sequence[FailureMode]) -> None:
    """Add ``--mode`` (one of ``modes``) and ``--delay``."""
    parser.add_argument("--mode", type=FailureMode, default=FailureMode.OK, choices=modes)
    parser.add_argument("--delay", type=float, default=0.0, help="SLOW delay in seconds")


def parse_cli_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Add ``--log-level``, parse ``argv`` and configure logging."""
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args


class Serving(Protocol):
    """Anything that starts and stops serving (every loopback server)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def serve_until_signalled(
    server: Serving,
    name: str,
    banner: Callable[[], str],
    on_started: Callable[[], None] = lambda: None,
) -> int:
    """Start ``server``, run ``on_started``, print ``banner()``, run until SIGINT or SIGTERM,
    then stop it."""
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server.start()
    try:
        on_started()
        print(banner(), flush=True)
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop()
    print(f"{name}: stopped", flush=True)
    return 0
