"""The upload and backup agents: ``upload.retry`` and ``backup.tasks`` (see
:mod:`sa01.pipeline.upload_tasks`).

Guarantees: each task runs on the lane of its key (upload id, backup task id);
offsets are acked in order once each is done or dead-lettered (pipeline.consuming).
"""

from __future__ import annotations

from typing import Any

from agents.host import AgentHost, inbound_message, raw_topic
from sa01.core.topics import BACKUP_TASKS, UPLOAD_RETRY

__all__ = ["register"]


def register(app: AgentHost, uploads_name: str, backups_name: str) -> tuple[Any, Any]:
    """Declare both agents on ``app`` (each feeds the runtime's consumer of its name);
    return them."""

    @app.agent(raw_topic(app, UPLOAD_RETRY), name=uploads_name)
    async def uploads(stream: Any) -> None:
        consumer = app.runtime.consumers[uploads_name]
        async for event in stream.noack().events():
            await consumer.submit(inbound_message(event.message), event.message.tp, event.ack)

    @app.agent(raw_topic(app, BACKUP_TASKS), name=backups_name)
    async def backups(stream: Any) -> None:
        consumer = app.runtime.consumers[backups_name]
        async for event in stream.noack().events():
            await consumer.submit(inbound_message(event.message), event.message.tp, event.ack)

    return uploads, backups
