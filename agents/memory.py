"""The memory agent: ``somabrain.memory.remember`` → SomaBrain, or ``pending_memory``."""

from __future__ import annotations

from typing import Any

from core.topics import MEMORY_REMEMBER
from pipeline.dead_letters import InboundMessage
from streams.app import StreamsApp

__all__ = ["register"]


def register(app: StreamsApp) -> Any:
    """Declare the agent on ``app``; return it."""
    topic = app.topic(
        app.settings.topic(MEMORY_REMEMBER),
        key_serializer="raw",
        value_serializer="raw",
        partitions=app.settings.topic_partitions,
    )

    @app.agent(topic, name="memory")
    async def memory(stream: Any) -> None:
        # One at a time per worker: order per tenant and agent, and the offset is acked
        # (when the next event is taken) only after the memory was stored or kept.
        async for event in stream.events():
            message = event.message
            await app.runtime.ready.wait()
            await app.runtime.memory_processor.process(
                InboundMessage(
                    message.topic, message.partition, message.offset, message.key, message.value
                )
            )
            app.runtime.relay.wake()

    return memory
