"""Attachments of an inbound message: store them along the storage chain (scenario 4).

* The primary store took it: done.
* A fallback store took it (a temporary copy): an :class:`UploadTask` with ``held_in``
  is owed, so that the upload agent moves it to the primary once that recovers.
* No store took it: an :class:`UploadTask` carrying the bytes is owed, and the user
  reads "Upload queued".
* Too large: refused with a notice that says why (nothing is stored).

The tasks are returned, not sent: the processor writes them to the outbox in the same
transaction as the reply, so each is published exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sa01.core.errors import FallbackExhaustedError, UploadRefusedError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.storage import StorageChain
from schemas.messages import (
    Attachment,
    ConversationInbound,
    UploadTask,
    storage_key_problem,
    tenant_upload_key,
)

__all__ = ["UPLOAD_QUEUED", "AttachmentOutcome", "AttachmentStorer"]

logger = logging.getLogger(__name__)

UPLOAD_QUEUED = "Upload queued"


@dataclass
class AttachmentOutcome:
    """What storing a message's attachments produced."""

    tasks: list[UploadTask] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    stored_in: dict[str, str] = field(default_factory=dict)
    """Attachment id → the store that took it."""


class AttachmentStorer:
    """Stores the inline attachments of a message."""

    def __init__(self, settings: Settings, storage: StorageChain, metrics: Metrics) -> None:
        self.settings = settings
        self.storage = storage
        self.metrics = metrics

    async def store(self, inbound: ConversationInbound) -> AttachmentOutcome:
        """Store every attachment that carries its bytes; see the module docstring."""
        outcome = AttachmentOutcome()
        for attachment in inbound.attachments:
            data = attachment.content()
            if data is None:
                continue  # already stored by the client
            if attachment.size_bytes > self.settings.upload_max_bytes:
                self._refuse(
                    outcome,
                    attachment,
                    f"{attachment.size_bytes} bytes is more than the "
                    f"{self.settings.upload_max_bytes}-byte limit",
                )
                continue
            await self._store_one(inbound, attachment, data, outcome)
        return outcome

    async def _store_one(
        self,
        inbound: ConversationInbound,
        attachment: Attachment,
        data: bytes,
        outcome: AttachmentOutcome,
    ) -> None:
        key = tenant_upload_key(inbound.tenant_id, attachment.storage_key)
        problem = storage_key_problem(key)
        if problem is not None:  # the caller's mistake: refused before any store is called
            self._refuse(outcome, attachment, f"its storage key {problem}")
            return
        task = UploadTask(
            upload_id=f"{inbound.tenant_id}/{inbound.message_id}/{attachment.attachment_id}",
            tenant_id=inbound.tenant_id,
            message_id=inbound.message_id,
            storage_key=key,
            content_type=attachment.content_type,
            size_bytes=attachment.size_bytes,
            content_base64=attachment.content_base64,
        )
        try:
            store = await self.storage.put(key, data, attachment.content_type)
        except UploadRefusedError as exc:
            self._refuse(outcome, attachment, str(exc))
            return
        except FallbackExhaustedError as exc:
            logger.warning("no store took an upload, queued", extra={"key": key, "error": str(exc)})
            outcome.tasks.append(task)
            _add(outcome.notices, UPLOAD_QUEUED)
            _add(outcome.degraded, "storage")
            self.metrics.uploads_total.labels(outcome="queued").inc()
            return
        outcome.stored_in[attachment.attachment_id] = store
        if store == self.storage.primary.name:
            self.metrics.uploads_total.labels(outcome="primary").inc()
            return
        # A temporary copy: the bytes need not travel again, the agent reads them there.
        outcome.tasks.append(task.model_copy(update={"content_base64": None, "held_in": store}))
        _add(outcome.degraded, "storage")
        self.metrics.uploads_total.labels(outcome="temporary").inc()

    def _refuse(self, outcome: AttachmentOutcome, attachment: Attachment, why: str) -> None:
        logger.info(
            "attachment refused",
            extra={"attachment_id": attachment.attachment_id, "reason": why},
        )
        outcome.notices.append(f"Attachment {attachment.attachment_id} refused: {why}")
        self.metrics.uploads_total.labels(outcome="refused").inc()


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)
