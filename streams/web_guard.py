"""The guard in front of the worker's web pages: Host, Origin, operator token, JSON, size.

Every request must name this worker in its ``Host`` header (``SA01_WEB_HOST``,
``localhost``, ``127.0.0.1``, ``::1`` or one of ``SA01_WEB_ALLOWED_HOSTS``): a page
that rebinds its own DNS name to 127.0.0.1 is refused (403).

A state-changing request (any method but GET, HEAD and OPTIONS) must also:

- carry no ``Origin``, or the worker's own (``http(s)://`` + the ``Host`` header):
  a web page elsewhere cannot post (403);
- come with ``Authorization: Bearer <SA01_OPERATOR_TOKEN>``: 401 without one, 403
  with a wrong one; while no token is configured every such request is refused (403)
  with the way to enable it;
- be ``application/json`` (415), which a browser cannot send without a preflight the
  worker never grants;
- hold at most ``SA01_WEB_MAX_BODY_BYTES`` (413), checked on ``Content-Length`` and
  again while reading, so a chunked body cannot grow past it.

Refusals answer ``{"error": ...}`` and are logged without the token. GET pages change
nothing, so they need no token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from sa01.core.settings import Settings

__all__ = ["SAFE_METHODS", "Refusal", "WebGuard"]

logger = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing and need no token."""

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the HTTP status and a line for the caller."""

    status: int
    error: str


def _hostname(netloc: str) -> str | None:
    try:
        return urlsplit(f"//{netloc}").hostname
    except ValueError:
        return None


class WebGuard:
    """Decides whether a request may reach a page (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        extra = (h.strip().lower() for h in settings.web_allowed_hosts.split(","))
        self.allowed_hosts = frozenset(
            {settings.web_host.lower(), *_LOOPBACK_NAMES, *(h for h in extra if h)}
        )
        self.token = settings.operator_token
        self.max_body_bytes = settings.web_max_body_bytes

    def host_refusal(self, host: str | None) -> Refusal | None:
        """403 unless ``host`` (the Host header) names this worker."""
        name = _hostname(host) if host else None
        if name is None or name not in self.allowed_hosts:
            return Refusal(
                403,
                f"Host {host!r} is not this worker's; allowed: "
                f"{', '.join(sorted(self.allowed_hosts))} (add a name with "
                "SA01_WEB_ALLOWED_HOSTS)",
            )
        return None

    def origin_refusal(self, origin: str | None, host: str | None) -> Refusal | None:
        """403 when a browser sent an Origin other than the worker's own."""
        if origin is None:
            return None
        try:
            parts = urlsplit(origin) if origin != "null" else None
        except ValueError:  # e.g. an unclosed IPv6 bracket
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or parts.netloc.lower() != (host or "").lower()
        ):
            return Refusal(403, f"cross-origin request from {origin!r} refused")
        return None

    def token_refusal(self, authorization: str | None) -> Refusal | None:
        """401 without a bearer token, 403 with a wrong one or when none is configured."""
        if self.token is None or not self.token.get_secret_value():
            return Refusal(
                403,
                "operator actions are disabled on this worker: set SA01_OPERATOR_TOKEN for the "
                "worker (and the same value for the `circuit` command), then send it as "
                "'Authorization: Bearer <token>'",
            )
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return Refusal(401, "send the operator token as 'Authorization: Bearer <token>'")
        expected = self.token.get_secret_value().encode()
        if not hmac.compare_digest(credentials.strip().encode(), expected):
            return Refusal(403, "wrong operator token")
        return None

    def body_refusal(self, content_type: str | None, length: int | None) -> Refusal | None:
        """415 unless the body is JSON, 413 when its declared length is over the cap."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return Refusal(415, f"expected Content-Type application/json, got {media or 'none'}")
        if length is not None and length > self.max_body_bytes:
            return self.too_large()
        return None

    def too_large(self) -> Refusal:
        """413 for a body over ``SA01_WEB_MAX_BODY_BYTES``."""
        return Refusal(413, f"request body over {self.max_body_bytes} bytes")

    def refusal(
        self, method: str, headers: Mapping[str, str], length: int | None
    ) -> Refusal | None:
        """The first reason to refuse a request with these headers, or None."""
        host = headers.get("Host")
        refused = self.host_refusal(host)
        if refused or method.upper() in SAFE_METHODS:
            return refused
        return (
            self.origin_refusal(headers.get("Origin"), host)
            or self.token_refusal(headers.get("Authorization"))
            or self.body_refusal(headers.get("Content-Type"), length)
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware: refuse, or read the capped body and call the page."""
        refused = self.refusal(request.method, request.headers, request.content_length)
        if refused is None and request.method.upper() not in SAFE_METHODS:
            try:
                await request.read()  # cached for the page; capped by client_max_size
            except web.HTTPRequestEntityTooLarge:
                refused = self.too_large()
        if refused is None:
            return await handler(request)
        logger.warning(
            "web request refused",
            extra={
                "method": request.method,
                "path": request.path,
                "remote": request.remote or "?",
                "status": refused.status,
                "error": refused.error,
            },
        )
        headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else None
        return web.json_response({"error": refused.error}, status=refused.status, headers=headers)

    def application_options(self) -> dict[str, object]:
        """Faust's ``web_application_options``: this middleware and the body cap."""
        return {"middlewares": [self.middleware], "client_max_size": self.max_body_bytes}
