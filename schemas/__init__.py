"""Message models of every topic, their codec and their exported JSON Schemas."""

from schemas.codec import ModelCodec, decode_message, encode_message
from schemas.messages import (
    SCHEMA_VERSION,
    Attachment,
    CircuitState,
    ConversationInbound,
    ConversationReply,
    DegradationEvent,
    MemoryRecord,
    ServiceState,
    UseCase,
)

__all__ = [
    "SCHEMA_VERSION",
    "Attachment",
    "CircuitState",
    "ConversationInbound",
    "ConversationReply",
    "DegradationEvent",
    "MemoryRecord",
    "ModelCodec",
    "ServiceState",
    "UseCase",
    "decode_message",
    "encode_message",
]
