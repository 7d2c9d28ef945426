"""The conversation agent: ``conversation.inbound`` → pipeline → ``conversation.outbound``.

Guarantees: records are handed to the runtime's session lanes unacked; the offset is
acked (in order per partition) once the pipeline finished or dead-lettered the record.
"""

from __future__ import annotations

from typing import Any

from agents.host import AgentHost, inbound_message, raw_topic
from sa01.core.topics import CONVERSATION_INBOUND

__all__ = ["register"]


def register(app: AgentHost, name: str) -> Any:
    """Declare the agent ``name`` on ``app``; return it."""

    @app.agent(raw_topic(app, CONVERSATION_INBOUND), name=name)
    async def conversation(stream: Any) -> None:
        async for event in stream.noack().events():
            message = event.message
            await app.runtime.submit(inbound_message(message), message.tp, event.ack)

    return conversation
