"""The memory agent: ``somabrain.memory.remember`` → SomaBrain, or ``pending_memory``.

Guarantees: lanes per tenant and agent (the record key): in order within one,
concurrent across them; offsets acked in order once each memory is stored, kept or
dead-lettered (pipeline.consuming).

On every rebalance the app makes the memory processor forget which (tenant, agent)
pairs it knew to have no pending memories (``sa01.pipeline.memory.ClearGroups``):
another worker may have kept some while it owned their partition.
"""

from __future__ import annotations

from typing import Any

from agents.host import AgentHost, inbound_message, raw_topic
from sa01.core.topics import MEMORY_REMEMBER

__all__ = ["register"]


def register(app: AgentHost, name: str) -> Any:
    """Declare the agent ``name`` on ``app`` (its records go to the runtime's consumer
    of the same name); return it."""

    @app.agent(raw_topic(app, MEMORY_REMEMBER), name=name)
    async def memory(stream: Any) -> None:
        consumer = app.runtime.consumers[name]
        async for event in stream.noack().events():
            message = event.message
            await consumer.submit(inbound_message(message), message.tp, event.ack)

    return memory
