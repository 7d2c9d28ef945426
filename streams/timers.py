"""Background tasks of the worker that need the app started (table recovery done)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sa01.core.errors import InfrastructureUnavailableError, TopicMissingError
from sa01.core.settings import Settings
from sa01.core.topics import missing_topics
from sa01.resilience.health import ServiceHealth
from streams.tailing import fold_topic

if TYPE_CHECKING:
    from streams.app import StreamsApp

__all__ = ["register"]

logger = logging.getLogger(__name__)


#: How long a starting worker reads the degradation events its group has not folded yet.
UNFOLDED_EVENTS_TIMEOUT_SECONDS = 10.0


async def unfolded_events(settings: Settings) -> dict[str, ServiceHealth]:
    """The health the degradation events after the group's committed offsets announce.

    The table's changelog holds what the group committed; a worker killed after folding
    an event, before its changelog write, leaves that event to be folded again. Seeding
    the monitor without it, the first probe would announce the same state as new.
    """
    try:
        return await asyncio.to_thread(
            fold_topic, settings, UNFOLDED_EVENTS_TIMEOUT_SECONDS, start="committed"
        )
    except InfrastructureUnavailableError as exc:
        logger.warning("the monitor starts from the service_health table alone: %s", exc)
        return {}


def register(app: StreamsApp) -> None:
    """Declare the tasks on ``app``."""

    @app.task  # type: ignore[untyped-decorator]
    async def start_monitor() -> None:
        """Seed the monitor from the recovered service_health table and the events not
        folded into it yet, then probe."""
        await app.runtime.ready.wait()
        await app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
        await app.runtime.start_monitor(await unfolded_events(app.settings))
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
