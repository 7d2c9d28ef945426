"""The worker's HTTP pages: ``/health``, ``/status``, ``/metrics``.

The ``/circuits`` pages (operator control of the breakers) are in ``streams.circuits``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.app import StreamsApp


if TYPE_CHECKING:
    from faust.web import Request, Response, View

__all__ = ["register"]


def register(app: StreamsApp) -> None:
    """Declare the pages on ``app``."""

    @app.page("/health")
    async def health(web: View, request: Request) -> Response:
        """Liveness and readiness; a degraded dependency does not fail it."""
        ready = app.runtime.ready.is_set()
        return web.json({"status": "ok", "ready": ready}, status=200 if ready else 503)

    @app.page("/status")
    async def status(web: View, request: Request) -> Response:
        """The degradation status as JSON; 503 until the table is recovered."""
        if not app.runtime.status_ready.is_set():
            return web.json({"status": "recovering"}, status=503)
        document = app.runtime.status().as_json()
        document["table"] = {name: h.state.value for name, h in app.health_rows().items()}
        document["worker"] = {
            "app_id": app.settings.app_id,
            "instance": app.settings.worker_instance_id,
            "leader": app.is_leader(),
            "relay_active": app.runtime.relay.active,
            "in_flight": app.runtime.lanes.in_flight,
        }
        document["backlog"] = {
            **app.runtime.backlog.as_json(),
            "memory_pending_rows": app.runtime.memory_sync.waiting,
        }
        return web.json(document)

    @app.page("/metrics")
    async def metrics(web: View, request: Request) -> Response:
        """Prometheus text from the app's own registry."""
        return web.bytes(app.metrics.render(), content_type="text/plain; version=0.0.4")
