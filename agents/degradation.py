"""The degradation agent: folds ``degradation.events`` into the ``service_health`` table."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from core.errors import InfrastructureUnavailableError, PermanentError
from core.topics import DEGRADATION_EVENTS
from pipeline.dead_letters import InboundMessage
from schemas.codec import decode_message
from schemas.messages import DegradationEvent
from streams.app import StreamsApp
from tables.service_health import fold

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(app: StreamsApp) -> Any:
    """Declare the agent on ``app``; return it."""
    topic = app.topic(
        app.settings.topic(DEGRADATION_EVENTS),
        key_serializer="raw",
        value_serializer="raw",
        partitions=app.settings.topic_partitions,
    )

    @app.agent(topic, name="degradation")
    async def degradation(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            try:
                health = decode_message(DegradationEvent, message.value)
            except PermanentError as exc:
                inbound = InboundMessage(
                    message.topic, message.partition, message.offset, message.key, message.value
                )
                await _dead_letter(app, inbound, exc)
                continue
            row = fold(app.service_health.get(health.service), health)
            if row is not None:
                app.service_health[health.service] = row

    return degradation


async def _dead_letter(app: StreamsApp, message: InboundMessage, error: Exception) -> None:
    while True:
        try:
            await app.runtime.dead_letters.write(message, error, 1)
            app.runtime.relay.wake()
            return
        except InfrastructureUnavailableError as exc:
            logger.warning("waiting to dead-letter %s: %s", message.position, exc)
            await asyncio.sleep(1.0)
