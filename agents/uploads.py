"""The upload and backup agents: ``upload.retry`` and ``backup.tasks`` (see pipeline.uploads)."""

from __future__ import annotations

from typing import Any

from core.topics import BACKUP_TASKS, UPLOAD_RETRY
from pipeline.dead_letters import InboundMessage
from streams.app import StreamsApp

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

    @app.agent(uploads_topic, name="uploads")
    async def uploads(stream: Any) -> None:
        # Each upload retries on its own lane; offsets are acked in order once done.
        async for event in stream.noack().events():
            await app.runtime.submit_upload(_inbound(event.message), event.message.tp, event.ack)

    @app.agent(backups_topic, name="backups")
    async def backups(stream: Any) -> None:
        # One task at a time; the offset is acked when the next is taken, after this one
        # was copied or dead-lettered.
        async for event in stream.events():
            await app.runtime.ready.wait()
            await app.runtime.backup_processor.process(_inbound(event.message))
            app.runtime.relay.wake()

    return uploads, backups
