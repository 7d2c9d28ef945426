"""The degradation agent: folds ``degradation.events`` into the ``service_health`` table."""

from __future__ import annotations

from typing import Any

from sa01.core.topics import DEGRADATION_EVENTS
from sa01.pipeline.dead_lettering import InboundMessage
from schemas.codec import decode_message
from schemas.messages import DegradationEvent
from streams.app import StreamsApp
from streams.runtime import DEGRADATION
from tables.service_health import fold

__all__ = ["register"]


def register(app: StreamsApp) -> Any:
    """Declare the agent on ``app``; return it."""
    topic = app.topic(
        app.settings.topic(DEGRADATION_EVENTS),
        key_serializer="raw",
        value_serializer="raw",
        partitions=app.settings.topic_partitions,
    )

    async def fold_event(message: InboundMessage) -> str:
        health = decode_message(DegradationEvent, message.value)
        row = fold(app.service_health.get(health.service), health)
        if row is None:
            return "ignored"
        app.service_health[health.service] = row
        return "folded"

    @app.agent(topic, name=DEGRADATION)
    async def degradation(stream: Any) -> None:
        # One event at a time (table writes belong to the event being processed); the
        # guard dead-letters what cannot be folded; the offset is acked once the event
        # was folded or dead-lettered.
        guard = app.runtime.degradation_guard
        async for event in stream.noack().events():
            message = event.message
            await guard.run(
                InboundMessage(
                    message.topic, message.partition, message.offset, message.key, message.value
                ),
                fold_event,
            )
            event.ack()

    return degradation
