"""What the worker builds at start-up and tears down at stop.

The pieces (database pool, relay, processor, lanes) are plain objects from the
Faust-agnostic packages; the app holds one :class:`Runtime` and the agents use it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from core.errors import ConfigurationError
from core.metrics import Metrics
from core.settings import Settings
from core.topics import ensure_topics
from journeys.conversation import ConversationJourney
from outbox.database import Database
from outbox.migrate import applied_versions, available_migrations
from outbox.relay import OutboxRelay
from pipeline.conversation import ConversationProcessor, InboundMessage
from pipeline.ordering import OrderedAcks, SessionLanes
from providers.responder import build_responder, missing_key_notice

__all__ = ["Runtime", "check_schema"]

logger = logging.getLogger(__name__)


async def check_schema(settings: Settings) -> None:
    """Fail clearly when the database lacks migrations this code needs."""
    applied = await applied_versions(settings)
    missing = [m for m in available_migrations() if m.version not in applied]
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise ConfigurationError(
            f"schema {settings.database_schema!r} lacks migrations {names}: "
            "run `faust -A streams migrate` (or `make run`)"
        )


class Runtime:
    """The worker's resources; constructing it does no I/O."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.database = Database(settings)
        self.relay = OutboxRelay(settings, self.database, metrics)
        self.processor = ConversationProcessor(
            settings,
            self.database,
            ConversationJourney(build_responder(settings)),
            metrics,
            on_committed=self.relay.wake,
        )
        self.lanes = SessionLanes(settings.max_in_flight)
        self.acks = OrderedAcks()
        self.ready = asyncio.Event()

    async def start(self) -> None:
        """Create topics, check the schema, open the pool, start the relay."""
        await ensure_topics(self.settings)
        await check_schema(self.settings)
        await self.database.open()
        if self.settings.relay_enabled_in_worker:
            await self.relay.start()
        notice = missing_key_notice(self.settings)
        if notice:
            logger.warning(notice)
        self.ready.set()
        logger.info(
            "worker ready: answering %s on %s; http://%s:%d/health /status /metrics",
            self.settings.topic("conversation.inbound"),
            self.settings.topic("conversation.outbound"),
            self.settings.web_host,
            self.settings.web_port,
        )

    async def stop(self) -> None:
        """Stop lanes and relay, close the pool; unfinished messages stay unacked."""
        self.ready.clear()
        await self.lanes.cancel()
        await self.relay.stop()
        await self.database.close()

    async def submit(self, message: InboundMessage, partition: Any, ack: Any) -> None:
        """Track ``message`` for in-order acking and queue it on its session's lane."""
        await self.ready.wait()
        self.acks.track(partition, message.offset, ack)
        lane = message.key if message.key is not None else message.position

        async def job() -> None:
            await self.processor.process(message)
            self.acks.done(partition, message.offset)

        await self.lanes.submit(lane, job)
