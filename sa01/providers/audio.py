"""Audio providers and their chains (the seed's section 5.2).

* TTS: elevenlabs (httpx, ElevenLabs' API) → openai/tts-1 (litellm) → kokoro (local,
  when the optional package is installed) → browser/native (the client speaks the
  text with the platform's own voice).
* STT: openai/whisper (litellm) → deepgram (httpx, Deepgram's API) → browser/native
  (the transcript the client made itself, sent as the message's ``text``).

Each provider translates its client's failures into :class:`ServiceUnavailableError`
(named ``tts.<name>`` or ``stt.<name>``), so the chain fails over on them; the native
links never fail while they have something to give. A provider's refusal of the input
itself (HTTP 400, 413, 415 or 422: unreadable audio, text it cannot speak) is an
:class:`AudioRefusedError`, the caller's mistake: breakers ignore it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from sa01.core.errors import (
    AudioRefusedError,
    ConfigurationError,
    MessageValidationError,
    ServiceUnavailableError,
)
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers._litellm import load_litellm
from sa01.providers.configured import audio_unconfigured
from sa01.providers.llm_errors import CALLER_ERROR_STATUSES
from sa01.providers.storage import provider_breaker_config
from sa01.resilience.circuit_breaker import CircuitBreaker
from sa01.resilience.fallback import ChainLink, ChainResult, FailoverCallback, FallbackChain

__all__ = [
    "NATIVE",
    "STT_NAMES",
    "TTS_NAMES",
    "AudioChains",
    "DeepgramSTT",
    "ElevenLabsTTS",
    "KokoroTTS",
    "NativeSTT",
    "NativeTTS",
    "OpenAISTT",
    "OpenAITTS",
    "Speech",
    "SpeechToText",
    "TextToSpeech",
    "build_audio_chains",
    "kokoro_installed",
]

logger = logging.getLogger(__name__)

#: The link that hands the work back to the client's own platform.
NATIVE = "native"
TTS_NAMES = ("elevenlabs", "openai", "kokoro", NATIVE)
STT_NAMES = ("openai", "deepgram", NATIVE)


@dataclass(frozen=True)
class Speech:
    """Spoken text: ``audio`` is None when the client must speak it natively."""

    audio: bytes | None
    content_type: str
    provider: str


class TextToSpeech(Protocol):
    """Turns text into audio."""

    name: str

    async def speak(self, text: str) -> Speech:
        """The audio of ``text`` (raises ServiceUnavailableError on failure)."""
        ...


class SpeechToText(Protocol):
    """Turns audio into text."""

    name: str

    async def transcribe(self, audio: bytes | None, content_type: str, client_text: str) -> str:
        """The transcript (raises ServiceUnavailableError on failure)."""
        ...


# Not an outage of the provider (its breaker ignores permanent errors): the next link
# may still have something to give.
def _no_audio() -> MessageValidationError:
    return MessageValidationError("the voice message's audio is unavailable")


def _http_failure(
    service: str, response: httpx.Response
) -> ServiceUnavailableError | AudioRefusedError:
    body = response.text[:300].replace("\n", " ")
    if response.status_code in CALLER_ERROR_STATUSES:
        status = response.status_code
        return AudioRefusedError(f"{service} refused the input: HTTP {status}: {body}")
    return ServiceUnavailableError(service, f"HTTP {response.status_code}: {body}")


def _client_failure(service: str, exc: Exception) -> ServiceUnavailableError | AudioRefusedError:
    """A litellm/OpenAI SDK exception, by the HTTP status it carries."""
    text = f"{type(exc).__name__}: {str(exc)[:300]}"
    if getattr(exc, "status_code", None) in CALLER_ERROR_STATUSES:
        return AudioRefusedError(f"{service} refused the input: {text}")
    return ServiceUnavailableError(service, text)


def _extension(content_type: str) -> str:
    kind = content_type.split(";", 1)[0].strip().lower()
    return {
        "audio/mpeg": "mp3",
        "audio/mp3": "mp3",
        "audio/wav": "wav",
        "audio/x-wav": "wav",
        "audio/ogg": "ogg",
        "audio/webm": "webm",
        "audio/mp4": "m4a",
        "audio/flac": "flac",
    }.get(kind, "mp3")


class ElevenLabsTTS:
    """``POST /v1/text-to-speech/{voice_id}`` with ``xi-api-key``."""

    name = "elevenlabs"

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        key = settings.elevenlabs_api_key
        self.key = key.get_secret_value() if key is not None else None
        base = settings.elevenlabs_url.rstrip("/")
        self.url = f"{base}/v1/text-to-speech/{settings.elevenlabs_voice_id}"
        self.model = settings.elevenlabs_model
        self.client = client

    async def speak(self, text: str) -> Speech:
        """MP3 audio of ``text``."""
        if not self.key:
            raise ServiceUnavailableError("tts.elevenlabs", "ELEVENLABS_API_KEY is not set")
        try:
            response = await self.client.post(
                self.url,
                params={"output_format": "mp3_44100_128"},
                headers={"xi-api-key": self.key, "accept": "audio/mpeg"},
                json={"text": text, "model_id": self.model},
            )
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError("tts.elevenlabs", f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise _http_failure("tts.elevenlabs", response)
        return Speech(response.content, "audio/mpeg", self.name)


class OpenAITTS:
    """OpenAI speech (``/v1/audio/speech``) through litellm."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        key = settings.openai_api_key
        self.key = key.get_secret_value() if key is not None else None
        self.model = settings.tts_openai_model
        self.voice = settings.tts_openai_voice
        self.api_base = settings.openai_audio_api_base
        self.timeout = settings.audio_timeout_seconds

    async def speak(self, text: str) -> Speech:
        """MP3 audio of ``text``."""
        if not self.key:
            raise ServiceUnavailableError("tts.openai", "OPENAI_API_KEY is not set")
        litellm = await load_litellm()
        try:
            response = await litellm.aspeech(
                model=self.model,
                input=text,
                voice=self.voice,
                api_base=self.api_base,
                api_key=self.key,
                timeout=self.timeout,
                response_format="mp3",
                max_retries=0,  # the chain fails over; the SDK would retry twice itself
            )
        except Exception as exc:  # litellm's errors: translate at the boundary
            raise _client_failure("tts.openai", exc) from exc
        return Speech(_content_of(response), "audio/mpeg", self.name)


def _content_of(response: object) -> bytes:
    content = getattr(response, "content", None)
    if isinstance(content, bytes):
        return content
    read = getattr(response, "read", None)
    if callable(read):
        data = read()
        if isinstance(data, bytes):
            return data
    raise ServiceUnavailableError("tts.openai", f"unexpected speech response {type(response)}")


def kokoro_installed() -> bool:
    """Whether the optional ``kokoro`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("kokoro") is not None


class KokoroTTS:
    """The local Kokoro voice (optional extra ``sa01-resilience[kokoro]``), WAV output."""

    name = "kokoro"
    NOT_INSTALLED = "the kokoro package is not installed (pip install 'sa01-resilience[kokoro]')"

    def __init__(self, settings: Settings) -> None:
        self.voice = settings.kokoro_voice
        self._pipeline: Any = None  # kokoro's KPipeline: the package ships no types

    def _synthesise(self, text: str) -> bytes:
        if self._pipeline is None:
            from kokoro import KPipeline  # type: ignore[import-not-found]

            self._pipeline = KPipeline(lang_code=self.voice[:1] or "a")
        samples: list[float] = []
        for _, _, audio in self._pipeline(text, voice=self.voice):
            samples.extend(float(x) for x in audio)
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(24_000)
            out.writeframes(
                b"".join(
                    int(max(-1.0, min(1.0, s)) * 32767).to_bytes(2, "little", signed=True)
                    for s in samples
                )
            )
        return buffer.getvalue()

    async def speak(self, text: str) -> Speech:
        """WAV audio of ``text`` (synthesised in a thread)."""
        if not kokoro_installed():
            raise ServiceUnavailableError("tts.kokoro", self.NOT_INSTALLED)
        try:
            audio = await asyncio.to_thread(self._synthesise, text)
        except Exception as exc:
            raise ServiceUnavailableError("tts.kokoro", f"{type(exc).__name__}: {exc}") from exc
        return Speech(audio, "audio/wav", self.name)


class NativeTTS:
    """The client speaks the reply's text with the platform's own voice."""

    name = NATIVE

    async def speak(self, text: str) -> Speech:
        """No audio: the client's voice."""
        return Speech(None, "", self.name)


class OpenAISTT:
    """OpenAI Whisper (``/v1/audio/transcriptions``) through litellm."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        key = settings.openai_api_key
        self.key = key.get_secret_value() if key is not None else None
        self.model = settings.stt_openai_model
        self.api_base = settings.openai_audio_api_base
        self.timeout = settings.audio_timeout_seconds

    async def transcribe(self, audio: bytes | None, content_type: str, client_text: str) -> str:
        """The transcript of ``audio``."""
        if audio is None:
            raise _no_audio()
        if not self.key:
            raise ServiceUnavailableError("stt.openai", "OPENAI_API_KEY is not set")
        litellm = await load_litellm()
        try:
            response = await litellm.atranscription(
                model=self.model,
                file=(f"voice.{_extension(content_type)}", audio),
                api_base=self.api_base,
                api_key=self.key,
                timeout=self.timeout,
                max_retries=0,  # the chain fails over; the SDK would retry twice itself
            )
        except Exception as exc:  # litellm's errors: translate at the boundary
            raise _client_failure("stt.openai", exc) from exc
        text = getattr(response, "text", None)
        if not isinstance(text, str):
            raise ServiceUnavailableError("stt.openai", "the transcription has no text")
        return text


class DeepgramSTT:
    """Deepgram pre-recorded transcription: ``POST /v1/listen`` with ``Token`` auth."""

    name = "deepgram"

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        key = settings.deepgram_api_key
        self.key = key.get_secret_value() if key is not None else None
        self.url = f"{settings.deepgram_url.rstrip('/')}/v1/listen"
        self.model = settings.deepgram_model
        self.client = client

    async def transcribe(self, audio: bytes | None, content_type: str, client_text: str) -> str:
        """The first alternative's transcript of the first channel."""
        if audio is None:
            raise _no_audio()
        if not self.key:
            raise ServiceUnavailableError("stt.deepgram", "DEEPGRAM_API_KEY is not set")
        try:
            response = await self.client.post(
                self.url,
                params={"model": self.model, "smart_format": "true"},
                headers={"Authorization": f"Token {self.key}", "Content-Type": content_type},
                content=audio,
            )
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError("stt.deepgram", f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise _http_failure("stt.deepgram", response)
        try:
            transcript = response.json()["results"]["channels"][0]["alternatives"][0]["transcript"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServiceUnavailableError("stt.deepgram", f"unexpected answer: {exc}") from exc
        if not isinstance(transcript, str):
            raise ServiceUnavailableError("stt.deepgram", "the transcript is not text")
        return transcript


class NativeSTT:
    """The transcript the client made with the platform's own recogniser."""

    name = NATIVE

    async def transcribe(self, audio: bytes | None, content_type: str, client_text: str) -> str:
        """The message's ``text``, when the client sent one."""
        if not client_text.strip():
            raise MessageValidationError(
                "the voice message has no readable audio and no transcript from the client"
            )
        return client_text


class AudioChains:
    """The TTS and STT chains, each provider behind its own breaker."""

    def __init__(
        self,
        tts: FallbackChain[TextToSpeech],
        stt: FallbackChain[SpeechToText],
        client: httpx.AsyncClient,
        *,
        missing: tuple[str, ...] = (),
        unconfigured: dict[str, str] | None = None,
    ) -> None:
        self.tts = tts
        self.stt = stt
        self.client = client
        #: TTS links the settings name whose package is not installed (left out).
        self.missing = missing
        #: Links left out for want of a key: ``tts.elevenlabs`` → what is missing.
        self.unconfigured = dict(unconfigured or {})

    @property
    def tts_primary(self) -> str:
        """The TTS link tried first."""
        return self.tts.links[0].name

    @property
    def stt_primary(self) -> str:
        """The STT link tried first."""
        return self.stt.links[0].name

    async def speak(self, text: str) -> ChainResult[Speech]:
        """Speech of ``text`` from the first TTS link that answers."""
        return await self.tts.run(lambda provider: provider.speak(text))

    async def transcribe(
        self, audio: bytes | None, content_type: str, client_text: str
    ) -> ChainResult[str]:
        """The transcript from the first STT link that answers.

        :class:`AudioRefusedError` (the audio itself is unreadable) is raised at once:
        the next provider would refuse it too, and it is nobody's outage.
        """
        return await self.stt.run(
            lambda provider: provider.transcribe(audio, content_type, client_text),
            should_fail_over=lambda exc: not isinstance(exc, AudioRefusedError),
        )

    def states(self, chain: str) -> dict[str, str]:
        """Breaker state per provider of ``chain`` (``tts`` or ``stt``), native excluded."""
        links = self.tts.links if chain == "tts" else self.stt.links
        return {link.name: str(link.breaker.state) for link in links if link.name != NATIVE}

    async def start(self) -> None:
        """Import litellm in a thread when a link needs it, so that the first call's
        timeout is not spent importing (and the event loop is never blocked by it)."""
        providers: list[object] = [link.provider for link in self.tts.links]
        providers += [link.provider for link in self.stt.links]
        # Without a key the link fails at once and never imports litellm.
        uses_litellm = any(
            isinstance(p, OpenAITTS | OpenAISTT) and p.key is not None for p in providers
        )
        if uses_litellm:
            await load_litellm()

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()


def _names(value: str, known: Sequence[str], variable: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise ConfigurationError(
            f"{variable}={value!r}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'};"
            f" known links: {', '.join(known)}"
        )
    return names


def build_audio_chains(settings: Settings, metrics: Metrics) -> AudioChains:
    """The chains named by ``SA01_TTS_CHAIN`` and ``SA01_STT_CHAIN``."""
    client = httpx.AsyncClient(timeout=settings.audio_timeout_seconds)
    config = provider_breaker_config(settings)
    timeout = settings.audio_timeout_seconds + 1.0

    def failover_counter(chain: str) -> FailoverCallback:
        def count(from_name: str, to_name: str) -> None:
            metrics.provider_failover_count.labels(
                chain=chain, from_provider=from_name, to_provider=to_name
            ).inc()

        return count

    tts_factories: dict[str, Callable[[], TextToSpeech]] = {
        "elevenlabs": lambda: ElevenLabsTTS(settings, client),
        "openai": lambda: OpenAITTS(settings),
        "kokoro": lambda: KokoroTTS(settings),
        NATIVE: NativeTTS,
    }
    stt_factories: dict[str, Callable[[], SpeechToText]] = {
        "openai": lambda: OpenAISTT(settings),
        "deepgram": lambda: DeepgramSTT(settings, client),
        NATIVE: NativeSTT,
    }
    tts_names = _names(settings.tts_chain, TTS_NAMES, "SA01_TTS_CHAIN")
    stt_names = _names(settings.stt_chain, STT_NAMES, "SA01_STT_CHAIN")
    unconfigured: dict[str, str] = {}
    for chain, names in (("tts", tts_names), ("stt", stt_names)):
        keyless = audio_unconfigured(settings, chain)
        if any(name not in keyless for name in names):  # a chain never loses its last link
            unconfigured.update({f"{chain}.{name}": why for name, why in keyless.items()})
    tts_names = [n for n in tts_names if f"tts.{n}" not in unconfigured]
    stt_names = [n for n in stt_names if f"stt.{n}" not in unconfigured]
    missing = [name for name in tts_names if name == "kokoro" and not kokoro_installed()]
    if missing:
        # Not a link at all: no call, no failover counted to a provider that cannot answer.
        logger.warning("TTS link kokoro skipped: %s", KokoroTTS.NOT_INSTALLED)
    tts_links: list[ChainLink[TextToSpeech]] = [
        ChainLink(
            name,
            tts_factories[name](),
            CircuitBreaker(f"tts:{name}", config, metrics=metrics),
            timeout,
        )
        for name in tts_names
        if name not in missing
    ]
    stt_links: list[ChainLink[SpeechToText]] = [
        ChainLink(
            name,
            stt_factories[name](),
            CircuitBreaker(f"stt:{name}", config, metrics=metrics),
            timeout,
        )
        for name in stt_names
    ]
    return AudioChains(
        FallbackChain(tts_links, on_failover=failover_counter("tts"), name="tts"),
        FallbackChain(stt_links, on_failover=failover_counter("stt"), name="stt"),
        client,
        missing=tuple(missing),
        unconfigured=unconfigured,
    )
