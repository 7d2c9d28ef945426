"""The degradation agent: folds ``degradation.events`` into the ``service_health`` table.

Guarantees: one event at a time (table writes belong to the event being processed);
what cannot be folded is dead-lettered; the offset is acked once the event was folded
or dead-lettered.
"""

from __future__ import annotations

from typing import Any

from agents.host import AgentHost, inbound_message, raw_topic
from sa01.core.topics import DEGRADATION_EVENTS
from sa01.pipeline.dead_lettering import InboundMessage
from schemas.codec import decode_message
from schemas.messages import DegradationEvent
from tables.service_health import fold

__all__ = ["register"]


def register(app: AgentHost, name: str) -> Any:
    """Declare the agent ``name`` on ``app``; return it."""

    async def fold_event(message: InboundMessage) -> str:
        health = decode_message(DegradationEvent, message.value)
        row = fold(app.service_health.get(health.service), health)
        if row is None:
            return "ignored"
        app.service_health[health.service] = row
        return "folded"

    @app.agent(raw_topic(app, DEGRADATION_EVENTS), name=name)
    async def degradation(stream: Any) -> None:
        guard = app.runtime.degradation_guard
        async for event in stream.noack().events():
            await guard.run(inbound_message(event.message), fold_event)
            event.ack()

    return degradation
