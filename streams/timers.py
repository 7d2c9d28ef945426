"""Background tasks of the worker that need the app started (table recovery done)."""

from __future__ import annotations

import logging

from streams.app import StreamsApp

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(app: StreamsApp) -> None:
    """Declare the tasks on ``app``."""

    @app.task  # type: ignore[untyped-decorator]
    async def start_monitor() -> None:
        """Seed the monitor from the recovered service_health table, then probe."""
        await app.runtime.ready.wait()
        await app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
        await app.runtime.start_monitor()
        logger.info("degradation monitor started (%d probes)", len(app.runtime.monitor.probes))
