"""Background tasks of the worker that need the app started (table recovery done)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sa01.core.errors import InfrastructureUnavailableError, TopicMissingError
from sa01.core.topics import missing_topics

if TYPE_CHECKING:
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
        logger.info(
            "degradation monitor started", extra={"probes": len(app.runtime.monitor.probes)}
        )

    @app.timer(interval=app.settings.topic_check_interval_seconds)  # type: ignore[untyped-decorator]
    async def check_topics() -> None:
        """A topic deleted under the worker stops it with one clear error (no spinning)."""
        if not app.runtime.ready.is_set():
            return
        try:
            gone = await missing_topics(app.settings)
        except InfrastructureUnavailableError:
            return  # the broker is down: the health monitor reports that
        if gone:
            app.runtime.fatal(
                TopicMissingError(
                    f"topics {', '.join(gone)} are gone from the broker; starting the worker "
                    "again recreates them (or run `faust -A streams create-topics`)"
                )
            )

    @app.task  # type: ignore[untyped-decorator]
    async def sample_backlog() -> None:
        """Every ``backlog_sample_seconds``: lag per partition, in flight, drain rate."""
        await app.runtime.ready.wait()
        while True:
            try:
                app.runtime.backlog.sample(app.consumer)
                app.metrics.background_slots_in_use.set(app.runtime.share.running)
            except Exception:  # a sample must never stop the worker
                logger.exception("backlog sample failed")
            await asyncio.sleep(app.settings.backlog_sample_seconds)
