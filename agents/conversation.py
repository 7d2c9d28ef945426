"""The conversation agent: ``conversation.inbound`` → pipeline → ``conversation.outbound``."""

from __future__ import annotations

from typing import Any

from sa01.core.topics import CONVERSATION_INBOUND
from sa01.pipeline.conversation import InboundMessage
from streams.app import StreamsApp

__all__ = ["register"]


def register(app: StreamsApp) -> Any:
    """Declare the agent on ``app``; return it."""
    inbound = app.topic(
        app.settings.topic(CONVERSATION_INBOUND),
        key_serializer="raw",
        value_serializer="raw",
        partitions=app.settings.topic_partitions,
    )

    @app.agent(inbound, name="conversation")
    async def conversation(stream: Any) -> None:
        async for event in stream.noack().events():
            message = event.message
            await app.runtime.submit(
                InboundMessage(
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                    value=message.value,
                ),
                message.tp,
                event.ack,
            )

    return conversation
