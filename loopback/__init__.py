"""Loopback fakes of external services for tests and demos.

:class:`LLMServer` is a real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions
and Anthropic messages APIs and can be switched into a :class:`FailureMode` at run time.
:class:`AudioServer` fakes ElevenLabs and OpenAI TTS and OpenAI and Deepgram STT the same way.
:class:`S3Server` is a moto-backed S3-compatible server whose data survives a stop and start.

Names are resolved lazily so that ``python -m loopback.llm_server`` does not import the module
twice.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopback.audio_server import AudioServer, fake_audio, transcript_of
    from loopback.llm_server import FailureMode, LLMServer, RecordedRequest
    from loopback.s3_server import S3Server
    from loopback.somabrain_server import (
        QUEUED_FOR_REPLAY_WARNING,
        SomaBrainServer,
        StoredMemory,
    )

_MODULE_OF = {
    "AudioServer": "loopback.audio_server",
    "fake_audio": "loopback.audio_server",
    "transcript_of": "loopback.audio_server",
    "FailureMode": "loopback.llm_server",
    "LLMServer": "loopback.llm_server",
    "RecordedRequest": "loopback.llm_server",
    "S3Server": "loopback.s3_server",
    "QUEUED_FOR_REPLAY_WARNING": "loopback.somabrain_server",
    "SomaBrainServer": "loopback.somabrain_server",
    "StoredMemory": "loopback.somabrain_server",
}

__all__ = [
    "QUEUED_FOR_REPLAY_WARNING",
    "AudioServer",
    "FailureMode",
    "LLMServer",
    "RecordedRequest",
    "S3Server",
    "SomaBrainServer",
    "StoredMemory",
    "fake_audio",
    "transcript_of",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
