"""Outbox records of the project's own messages: JSON value and the contract's headers."""

from __future__ import annotations

from pydantic import BaseModel

from sa01.outbox.store import OutboxRecord
from schemas.codec import CONTENT_TYPE, encode_message
from schemas.headers import CONTENT_TYPE as CONTENT_TYPE_HEADER
from schemas.headers import IDEMPOTENCY_KEY

__all__ = ["message_record"]


def message_record(topic: str, key: str, message: BaseModel, message_id: str) -> OutboxRecord:
    """``message`` for ``topic`` with ``idempotency-key`` and ``content-type`` headers.

    The outbox key ``topic:message_id`` makes a second write of the same message a no-op.
    """
    return OutboxRecord(
        topic=topic,
        key=key.encode(),
        value=encode_message(message),
        idempotency_key=f"{topic}:{message_id}",
        headers={IDEMPOTENCY_KEY: message_id, CONTENT_TYPE_HEADER: CONTENT_TYPE},
    )
