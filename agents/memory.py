"""The memory agent: ``somabrain.memory.remember`` → SomaBrain, or ``pending_memory``."""

from __future__ import annotations

from typing import Any

from sa01.core.topics import MEMORY_REMEMBER
from sa01.pipeline.dead_lettering import InboundMessage
from streams.app import StreamsApp
from streams.runtime import MEMORY

__all__ = ["register"]


def register(app: StreamsApp) -> Any:
    """Declare the agent on ``app``; return it."""
    topic = app.topic(
        app.settings.topic(MEMORY_REMEMBER),
        key_serializer="raw",
        value_serializer="raw",
        partitions=app.settings.topic_partitions,
    )

    @app.agent(topic, name=MEMORY)
    async def memory(stream: Any) -> None:
        # Lanes per tenant and agent (the record key): in order within one, concurrent
        # across them; offsets acked in order once each memory is stored, kept or
        # dead-lettered (pipeline.consuming).
        consumer = app.runtime.consumers[MEMORY]
        async for event in stream.noack().events():
            message = event.message
            await consumer.submit(
                InboundMessage(
                    message.topic, message.partition, message.offset, message.key, message.value
                ),
                message.tp,
                event.ack,
            )

    return memory
