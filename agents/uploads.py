"""The upload and backup agents: ``upload.retry`` and ``backup.tasks`` (see pipeline.uploads)."""

from __future__ import annotations

from typing import Any

from sa01.core.topics import BACKUP_TASKS, UPLOAD_RETRY
from sa01.pipeline.dead_lettering import InboundMessage
from streams.app import StreamsApp
from streams.runtime import BACKUPS, UPLOADS

__all__ = ["register"]


def _inbound(message: Any) -> InboundMessage:
    return InboundMessage(
        message.topic, message.partition, message.offset, message.key, message.value
    )


def register(app: StreamsApp) -> tuple[Any, Any]:
    """Declare both agents on ``app``; return them."""
    partitions = app.settings.topic_partitions
    uploads_topic = app.topic(
        app.settings.topic(UPLOAD_RETRY),
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    backups_topic = app.topic(
        app.settings.topic(BACKUP_TASKS),
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )

    # Each task runs on the lane of its key (upload id, backup task id); offsets are
    # acked in order once each is done or dead-lettered (pipeline.consuming).
    @app.agent(uploads_topic, name=UPLOADS)
    async def uploads(stream: Any) -> None:
        consumer = app.runtime.consumers[UPLOADS]
        async for event in stream.noack().events():
            await consumer.submit(_inbound(event.message), event.message.tp, event.ack)

    @app.agent(backups_topic, name=BACKUPS)
    async def backups(stream: Any) -> None:
        consumer = app.runtime.consumers[BACKUPS]
        async for event in stream.noack().events():
            await consumer.submit(_inbound(event.message), event.message.tp, event.ack)

    return uploads, backups
