"""Voice messages (scenario 3): STT before the answer, TTS after it, each along its chain.

The audio of a voice message is its first ``audio/*`` attachment, inline or already
stored. Whatever falls back, the user is answered: with every STT link down the
client's own transcript (the message's ``text``) is used, with every TTS link down the
client speaks the reply with its own voice; either way the reply carries the notice
"Voice in fallback mode" and names the chain in ``degraded``. The spoken reply is
stored in the primary store only (it can be made again): when that store is down the
client's voice speaks instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sa01.core.errors import (
    AudioRefusedError,
    FallbackExhaustedError,
    ObjectNotFoundError,
    ServiceUnavailableError,
    UploadRefusedError,
)
from sa01.core.metrics import Metrics
from sa01.providers.audio import NATIVE, AudioChains
from sa01.providers.storage import StorageChain
from schemas.messages import (
    Attachment,
    ConversationInbound,
    ConversationReply,
    tenant_object_key,
    tenant_upload_key,
)

__all__ = ["UNREADABLE_AUDIO", "VOICE_FALLBACK", "Transcript", "VoiceJourney"]

logger = logging.getLogger(__name__)

VOICE_FALLBACK = "Voice in fallback mode"
NOT_HEARD = "Sorry, I could not make out your voice message. Could you type it, or try again?"
UNREADABLE_AUDIO = "Voice message unreadable: the recording could not be decoded"


@dataclass
class Transcript:
    """The text of a voice message and how it was obtained."""

    text: str | None
    provider: str
    degraded: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


class VoiceJourney:
    """Transcribes voice messages and speaks replies."""

    def __init__(self, audio: AudioChains, storage: StorageChain, metrics: Metrics) -> None:
        self.audio = audio
        self.storage = storage
        self.metrics = metrics

    async def _audio_of(self, inbound: ConversationInbound) -> tuple[bytes | None, str]:
        """The recording's bytes and type; :class:`AudioRefusedError` when the message
        names a recording its tenant does not have (the caller's mistake)."""
        recording = next((a for a in inbound.attachments if a.is_audio), None)
        if recording is None:
            return None, "audio/mpeg"
        data = recording.content()
        if data is not None:
            return data, recording.content_type
        # Read only inside the sender's own upload space: never another tenant's object.
        key = tenant_upload_key(inbound.tenant_id, recording.storage_key)
        try:
            _, data = await self.storage.get(key)
        except (ObjectNotFoundError, UploadRefusedError) as exc:
            raise AudioRefusedError(f"the recording {recording.storage_key!r}: {exc}") from exc
        except (FallbackExhaustedError, ServiceUnavailableError) as exc:
            logger.warning("voice audio unreadable", extra={"key": key, "error": str(exc)})
            return None, recording.content_type
        return data, recording.content_type

    async def transcribe(self, inbound: ConversationInbound) -> Transcript:
        """The message's text; ``text`` None when nothing could be made of it."""
        try:
            audio, content_type = await self._audio_of(inbound)
            result = await self.audio.transcribe(audio, content_type, inbound.text)
        except AudioRefusedError as exc:
            # The recording itself is at fault, not a provider: no chain is degraded.
            logger.info(
                "voice message unreadable",
                extra={"message_id": inbound.message_id, "error": str(exc)},
            )
            if inbound.text.strip():
                return Transcript(inbound.text, NATIVE, [], [UNREADABLE_AUDIO])
            return Transcript(None, "none", [], [UNREADABLE_AUDIO])
        except FallbackExhaustedError as exc:
            logger.warning(
                "no STT link could transcribe",
                extra={"message_id": inbound.message_id, "error": str(exc)},
            )
            return Transcript(None, "none", ["stt"], [VOICE_FALLBACK])
        if result.provider == self.audio.stt_primary:
            return Transcript(result.value, result.provider)
        return Transcript(result.value, result.provider, ["stt"], [VOICE_FALLBACK])

    def not_heard(
        self, inbound: ConversationInbound, reply_id: str, transcript: Transcript
    ) -> ConversationReply:
        """The reply when the voice message could not be transcribed at all."""
        return ConversationReply(
            message_id=reply_id,
            in_reply_to=inbound.message_id,
            tenant_id=inbound.tenant_id,
            session_id=inbound.session_id,
            text=NOT_HEARD,
            model="none",
            degraded=tuple(transcript.degraded),
            notices=tuple(transcript.notices),
            voice_provider=NATIVE,
        )

    async def speak(self, reply: ConversationReply, transcript: Transcript) -> ConversationReply:
        """``reply`` with its spoken audio attached (or marked for the client's voice)."""
        degraded = list(transcript.degraded)
        notices = list(transcript.notices)
        provider = NATIVE
        attachments: tuple[Attachment, ...] = ()
        try:
            result = await self.audio.speak(reply.text)
            speech = result.value
            provider = result.provider
        except FallbackExhaustedError as exc:
            logger.warning(
                "no TTS link spoke", extra={"message_id": reply.message_id, "error": str(exc)}
            )
            speech = None
        if speech is not None and speech.audio is not None:
            extension = "wav" if speech.content_type == "audio/wav" else "mp3"
            key = tenant_object_key(reply.tenant_id, "voice", f"{reply.message_id}.{extension}")
            try:
                await self.storage.put_primary(key, speech.audio, speech.content_type)
                attachments = (
                    Attachment(
                        attachment_id=f"{reply.message_id}-voice",
                        content_type=speech.content_type,
                        size_bytes=len(speech.audio),
                        storage_key=key,
                    ),
                )
            except (ServiceUnavailableError, UploadRefusedError) as exc:
                logger.warning(
                    "spoken reply not stored, client voice",
                    extra={"key": key, "error": str(exc)},
                )
                provider = NATIVE
                degraded.append("storage")
        if provider != self.audio.tts_primary:
            degraded.append("tts")
            if VOICE_FALLBACK not in notices:
                notices.append(VOICE_FALLBACK)
        self.metrics.voice_messages_total.labels(
            stt_provider=transcript.provider, tts_provider=provider
        ).inc()
        return reply.model_copy(
            update={
                "degraded": tuple(sorted({*reply.degraded, *degraded})),
                "notices": (*reply.notices, *(n for n in notices if n not in reply.notices)),
                "attachments": attachments,
                "voice_provider": provider,
            }
        )
