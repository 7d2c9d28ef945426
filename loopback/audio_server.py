"""A controllable fake speech provider: ElevenLabs and OpenAI TTS, OpenAI and Deepgram STT.

Like :mod:`loopback.llm_server`, the server runs an aiohttp application on its own event loop in
a background thread and is switched into a :class:`FailureMode` at run time. One instance speaks
every API below, so it can stand in for any of the providers; run one per provider to fail them
independently.

Endpoints:

* ``POST /v1/text-to-speech/{voice_id}`` (also ``.../stream``): ElevenLabs. Header
  ``xi-api-key``; JSON ``{"text", "model_id", "voice_settings"?}``; query ``output_format``
  (``mp3_44100_128`` by default). Answers ``audio/mpeg`` (the ``/stream`` route chunked).
* ``POST /v1/audio/speech`` (also ``/audio/speech``): OpenAI. ``Authorization: Bearer``; JSON
  ``{"model", "input", "voice", "response_format"?}``; answers the format's content type.
* ``POST /v1/audio/transcriptions`` (also ``/audio/transcriptions``): OpenAI. Multipart ``file``,
  ``model``, ``response_format`` (json, text, verbose_json, srt, vtt), ``language``.
* ``POST /v1/listen``: Deepgram pre-recorded. ``Authorization: Token <key>`` (or ``Bearer``);
  raw audio body; query ``model``, ``language``, ``smart_format``...; answers Deepgram's JSON.
* ``GET /health``: always 200, not recorded.
* ``GET /_loopback/mode``, ``POST /_loopback/mode``: control endpoints for out-of-process use.

Audio is fake and deterministic: :func:`fake_audio` encodes the text, :func:`transcript_of`
decodes it, so a TTS answer fed to an STT route transcribes back to the same text. Errors use
each API's own body: OpenAI ``{"error": {...}}``, ElevenLabs ``{"detail": {"status",
"message"}}``, Deepgram ``{"err_code", "err_msg", "request_id"}``.

Run one in the foreground with ``python -m loopback.audio_server --port 8011 --name tts``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, Final, Literal

from aiohttp import web

from loopback._server import (
    DEFAULT_HOST,
    FailureMode,
    ProviderServer,
    ProviderSettings,
    add_mode_arguments,
    cli_parser,
    drop,
    json_object,
    parse_cli_args,
    serve_until_signalled,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_MAGIC",
    "ID3_HEADER",
    "AudioCall",
    "AudioServer",
    "FailureMode",
    "Route",
    "fake_audio",
    "fake_duration",
    "transcript_of",
]

Route = Literal["elevenlabs_tts", "openai_tts", "openai_stt", "deepgram_stt"]
"""The faked operations, as counted by :meth:`AudioServer.call_counts`."""
_Api = Literal["elevenlabs", "openai", "deepgram"]

ROUTES: Final[tuple[Route, ...]] = ("elevenlabs_tts", "openai_tts", "openai_stt", "deepgram_stt")
TTS_ROUTES: Final[frozenset[Route]] = frozenset({"elevenlabs_tts", "openai_tts"})
STT_ROUTES: Final[frozenset[Route]] = frozenset({"openai_stt", "deepgram_stt"})

ID3_HEADER: Final = b"ID3\x04\x00\x00\x00\x00\x00\x00"
"""An empty ID3v2.4 tag (10 bytes, size 0) that starts :func:`fake_audio`, as MP3 files do."""
AUDIO_MAGIC: Final = b"SA01AUDIO"
"""The marker after the ID3 tag; the JSON payload follows it."""
_SECONDS_PER_WORD: Final = 0.4
_BYTES_PER_SECOND: Final = 16_000  # 128 kbit/s MP3
_OPENAI_MAX_INPUT: Final = 4096
_ELEVENLABS_MAX_TEXT: Final = 5000
_DEEPGRAM_MODEL_UUID: Final = "1abfe86b-e047-4eed-858a-35e5625b41ee"

_OPENAI_SPEECH_TYPES: Final = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_ELEVENLABS_TYPES: Final = {
    "mp3": "audio/mpeg",
    "pcm": "audio/pcm",
    "ulaw": "audio/basic",
    "alaw": "audio/alaw",
    "opus": "audio/opus",
    "wav": "audio/wav",
}
_TRANSCRIPTION_FORMATS: Final = frozenset({"json", "text", "verbose_json", "srt", "vtt"})
_STREAM_CHUNK_BYTES: Final = 32


# ---------------------------------------------------------------------- fake audio


def fake_audio(text: str, *, voice: str = "", provider: str = "") -> bytes:
    """Deterministic fake audio for ``text``: :data:`ID3_HEADER` + :data:`AUDIO_MAGIC` + JSON.

    The JSON is ``{"provider", "text", "voice"}`` with sorted keys, compact separators and
    UTF-8 (``ensure_ascii=False``); :func:`transcript_of` reads the text back.
    """
    payload = {"provider": provider, "text": text, "voice": voice}
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return ID3_HEADER + AUDIO_MAGIC + encoded.encode()


def _decode(audio: bytes) -> dict[str, Any] | None:
    body = audio
    if body[:3] == b"ID3" and len(body) >= 10:
        size = 0
        for byte in body[6:10]:  # syncsafe: 7 bits per byte
            size = (size << 7) | (byte & 0x7F)
        body = body[10 + size :]
    if not body.startswith(AUDIO_MAGIC):
        return None
    payload = json_object(body[len(AUDIO_MAGIC) :])
    if payload is None or not isinstance(payload.get("text"), str):
        return None
    return payload


def transcript_of(audio: bytes) -> str | None:
    """The text :func:`fake_audio` encoded in ``audio``, or None for any other bytes."""
    payload = _decode(audio)
    return None if payload is None else str(payload["text"])


def fake_duration(audio: bytes) -> float:
    """The duration the STT routes report: 0.4 s a word for fake audio, else 128 kbit/s."""
    text = transcript_of(audio)
    if text is None:
        return round(len(audio) / _BYTES_PER_SECOND, 3)
    return round(max(1, len(text.split())) * _SECONDS_PER_WORD, 3)


def looks_like_audio(audio: bytes) -> bool:
    """Whether ``audio`` starts like a container the real STT APIs decode (ID3/MPEG, WAV,
    Ogg, FLAC, WebM, MP4) or is :func:`fake_audio`. Other bytes are refused with 400, as
    OpenAI ("Audio file might be corrupted or unsupported") and Deepgram ("corrupt or
    unsupported data") refuse them."""
    if audio.startswith((b"ID3", b"OggS", b"fLaC", b"\x1a\x45\xdf\xa3", AUDIO_MAGIC)):
        return True
    if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        return True
    if audio[4:8] == b"ftyp":
        return True
    return len(audio) >= 2 and audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0  # MPEG frame sync


def _heard(audio: bytes) -> str:
    text = transcript_of(audio)
    return text if text is not None else f"unrecognised audio of {len(audio)} bytes"


# ---------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, slots=True)
class AudioCall:
    """One TTS or STT call as the server understood it (failed and hung calls included)."""

    route: Route
    path: str
    mode: FailureMode
    """The failure mode in force when the call arrived."""
    query: dict[str, str]
    """The query parameters (e.g. ``output_format``, Deepgram's ``model``)."""
    fields: dict[str, str]
    """The JSON body's or multipart form's scalar fields, as strings."""
    text: str | None = None
    """TTS: the text to speak."""
    voice: str | None = None
    """TTS: the voice id (ElevenLabs path) or ``voice`` (OpenAI)."""
    audio: bytes | None = None
    """STT: the uploaded audio."""


class AudioServer(ProviderServer):
    """A fake ElevenLabs + OpenAI audio + Deepgram HTTP server with switchable failures.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with AudioServer(name="tts") as tts:
            tts.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=2)
            ...  # ElevenLabs and Deepgram: tts.base_url; OpenAI: tts.openai_base_url

    Every call is recorded in :attr:`requests` (the base log) and :attr:`calls` (what was said or
    heard); :meth:`call_counts` counts them per route. ``/health`` is not recorded.
    """

    _title: ClassVar[str] = "AudioServer"
    _label: ClassVar[str] = "audio server"
    _logger: ClassVar[logging.Logger] = logger
    _client_max_size: ClassVar[int] = 64 * 1024 * 1024

    def __init__(
        self,
        port: int = 0,
        name: str = "audio",
        *,
        host: str = DEFAULT_HOST,
        api_key: str | None = None,
    ) -> None:
        """Create a stopped server; ``port=0`` picks a free port on :meth:`start`.

        Every route requires its API's credential header; with ``api_key`` the credential must
        also equal it (otherwise 401 with the API's invalid-key body).
        """
        super().__init__(port, name, host=host, default_settings=ProviderSettings())
        if api_key is not None and not api_key.strip():
            raise ValueError("api_key must not be blank")
        self._api_key: Final = api_key
        self._calls: list[AudioCall] = []  # guarded by _lock

    # ------------------------------------------------------------------ public API

    @property
    def openai_base_url(self) -> str:
        """``base_url + "/v1"``, the ``api_base`` OpenAI clients (and litellm) expect."""
        return self.base_url + "/v1"

    @property
    def api_key(self) -> str | None:
        """The credential every route requires, or None when any non-empty one is accepted."""
        return self._api_key

    @property
    def calls(self) -> list[AudioCall]:
        """A copy of the TTS and STT calls received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def call_counts(self) -> dict[Route, int]:
        """How many calls each route received (every route present, 0 when unused)."""
        counts: dict[Route, int] = dict.fromkeys(ROUTES, 0)
        with self._lock:
            for call in self._calls:
                counts[call.route] += 1
        return counts

    @property
    def tts_count(self) -> int:
        """How many TTS calls arrived (ElevenLabs and OpenAI speech)."""
        counts = self.call_counts()
        return sum(counts[route] for route in TTS_ROUTES)

    @property
    def stt_count(self) -> int:
        """How many STT calls arrived (OpenAI transcriptions and Deepgram listen)."""
        counts = self.call_counts()
        return sum(counts[route] for route in STT_ROUTES)

    def reset_requests(self) -> None:
        """Forget the recorded requests and calls."""
        with self._lock:
            self._requests.clear()
            self._calls.clear()

    # ------------------------------------------------------------------ HTTP

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/text-to-speech/{voice_id}", self._handle_elevenlabs)
        router.add_post("/v1/text-to-speech/{voice_id}/stream", self._handle_elevenlabs)
        for prefix in ("/v1", ""):
            router.add_post(f"{prefix}/audio/speech", self._handle_openai_speech)
            router.add_post(f"{prefix}/audio/transcriptions", self._handle_openai_transcription)
        router.add_post("/v1/listen", self._handle_deepgram)
        router.add_get("/health", self._handle_health)

    def _log_call(self, request: web.Request, body: dict[str, Any] | None, call: AudioCall) -> None:
        """Record ``request`` in the base log and ``call`` in :attr:`calls`."""
        with self._lock:
            self._calls.append(call)
        self._record(request, body)

    async def _admit(
        self, request: web.Request, api: _Api, credential: str | None, *, stt: bool = False
    ) -> ProviderSettings | web.StreamResponse:
        """Wait out HANG and SLOW, check the credential and answer the error modes."""
        settings = await self._settle()
        if settings is None or settings.mode is FailureMode.REFUSE:
            return drop(request)
        if settings.mode is FailureMode.SLOW and await self._sleep(settings.delay_seconds):
            return drop(request)
        if not credential:
            return _unauthorized(api, missing=True)
        if self._api_key is not None and credential != self._api_key:
            return _unauthorized(api, missing=False)
        match settings.mode:
            case FailureMode.ERROR_500:
                return _error(api, 500)
            case FailureMode.RATE_LIMITED:
                response = _error(api, 429, retry=settings.retry_after_seconds)
                response.headers["Retry-After"] = f"{settings.retry_after_seconds:g}"
                if api == "openai":
                    ms = round(settings.retry_after_seconds * 1000)
                    response.headers["retry-after-ms"] = str(ms)
                return response
            case FailureMode.BAD_REQUEST:
                return _error(api, 400, stt=stt)
            case _:
                return settings

    # -- ElevenLabs

    async def _handle_elevenlabs(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json_object(raw)
        voice_id = request.match_info["voice_id"]
        text = body.get("text") if body is not None else None
        self._log_call(
            request,
            body,
            AudioCall(
                route="elevenlabs_tts",
                path=request.path,
                mode=self.mode,
                query=dict(request.query),
                fields=_scalars(body),
                text=text if isinstance(text, str) else None,
                voice=voice_id,
            ),
        )
        admitted = await self._admit(request, "elevenlabs", request.headers.get("xi-api-key"))
        if not isinstance(admitted, ProviderSettings):
            return admitted
        if body is None:
            return _elevenlabs_invalid(raw, "json_invalid", "JSON decode error", ["body", 0])
        if not isinstance(text, str):
            return _elevenlabs_invalid(body, "missing", "Field required", ["body", "text"])
        if len(text) > _ELEVENLABS_MAX_TEXT:
            return _error("elevenlabs", 400)
        output_format = request.query.get("output_format", "mp3_44100_128")
        content_type = _ELEVENLABS_TYPES.get(output_format.split("_", 1)[0])
        if content_type is None:
            return _elevenlabs_detail(
                400, "invalid_output_format", f"Invalid output format: {output_format}"
            )
        audio = fake_audio(text, voice=voice_id, provider="elevenlabs")
        headers = {"request-id": uuid.uuid4().hex, "character-cost": str(len(text))}
        if not request.path.endswith("/stream"):
            return web.Response(body=audio, content_type=content_type, headers=headers)
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = content_type
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(audio), _STREAM_CHUNK_BYTES):
            await response.write(audio[start : start + _STREAM_CHUNK_BYTES])
        await response.write_eof()
        return response

    # -- OpenAI

    async def _handle_openai_speech(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json_object(raw)
        fields = _scalars(body)
        self._log_call(
            request,
            body,
            AudioCall(
                route="openai_tts",
                path=request.path,
                mode=self.mode,
                query=dict(request.query),
                fields=fields,
                text=fields.get("input"),
                voice=fields.get("voice"),
            ),
        )
        admitted = await self._admit(request, "openai", _bearer(request))
        if not isinstance(admitted, ProviderSettings):
            return admitted
        if body is None:
            return _openai_invalid("We could not parse the JSON body of your request.")
        for field in ("model", "input", "voice"):
            if not isinstance(body.get(field), str):
                return _openai_invalid(f"'{field}' is a required property", param=field)
        text = str(body["input"])
        if len(text) > _OPENAI_MAX_INPUT:
            return _error("openai", 400)
        response_format = str(body.get("response_format") or "mp3")
        content_type = _OPENAI_SPEECH_TYPES.get(response_format)
        if content_type is None:
            return _openai_invalid(
                f"Invalid value: '{response_format}'. Supported values are: "
                + ", ".join(f"'{name}'" for name in _OPENAI_SPEECH_TYPES),
                param="response_format",
                code="invalid_value",
            )
        audio = fake_audio(text, voice=str(body["voice"]), provider="openai")
        return web.Response(
            body=audio, content_type=content_type, headers={"x-request-id": _request_id()}
        )

    async def _handle_openai_transcription(self, request: web.Request) -> web.StreamResponse:
        fields, audio, filename = await _read_form(request)
        self._log_call(
            request,
            None,
            AudioCall(
                route="openai_stt",
                path=request.path,
                mode=self.mode,
                query=dict(request.query),
                fields=fields,
                audio=audio,
            ),
        )
        admitted = await self._admit(request, "openai", _bearer(request), stt=True)
        if not isinstance(admitted, ProviderSettings):
            return admitted
        if audio is None:
            return _openai_invalid("'file' is a required property", param="file")
        if "model" not in fields:
            return _openai_invalid("'model' is a required property", param="model")
        response_format = fields.get("response_format") or "json"
        if response_format not in _TRANSCRIPTION_FORMATS:
            return _openai_invalid(
                f"Invalid value: '{response_format}'. Supported values are: "
                "'json', 'text', 'srt', 'verbose_json', and 'vtt'.",
                param="response_format",
                code="invalid_value",
            )
        if not audio or not looks_like_audio(audio):
            return _openai_invalid(
                "Audio file might be corrupted or unsupported", param="file", code="invalid_value"
            )
        text = _heard(audio)
        duration = fake_duration(audio)
        headers = {"x-request-id": _request_id()}
        match response_format:
            case "text":
                return web.Response(text=text, content_type="text/plain", headers=headers)
            case "srt":
                srt = f"1\n00:00:00,000 --> {_timestamp(duration, ',')}\n{text}\n\n"
                return web.Response(text=srt, content_type="text/plain", headers=headers)
            case "vtt":
                vtt = f"WEBVTT\n\n00:00:00.000 --> {_timestamp(duration, '.')}\n{text}\n\n"
                return web.Response(text=vtt, content_type="text/plain", headers=headers)
            case "verbose_json":
                payload = _verbose_transcription(text, duration, fields.get("language"), filename)
                return web.json_response(payload, headers=headers)
            case _:
                usage = {"type": "duration", "seconds": max(1, round(duration))}
                return web.json_response({"text": text, "usage": usage}, headers=headers)

    # -- Deepgram

    async def _handle_deepgram(self, request: web.Request) -> web.StreamResponse:
        audio = await request.read()
        query = dict(request.query)
        self._log_call(
            request,
            None,
            AudioCall(
                route="deepgram_stt",
                path=request.path,
                mode=self.mode,
                query=query,
                fields={},
                audio=audio,
            ),
        )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        credential = token.strip() if scheme.lower() in ("token", "bearer") else None
        admitted = await self._admit(request, "deepgram", credential, stt=True)
        if not isinstance(admitted, ProviderSettings):
            return admitted
        if request.content_type == "application/json":
            # {"url": ...} asks Deepgram to fetch remote audio, which this server never does.
            return _deepgram_error(
                400, "REMOTE_CONTENT_ERROR", "The loopback server cannot fetch remote audio."
            )
        if not audio or not looks_like_audio(audio):
            return _error("deepgram", 400, stt=True)
        return web.json_response(
            _deepgram_result(audio, query), headers={"dg-request-id": str(uuid.uuid4())}
        )

    # -- other

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self._name})

    def _describe(self) -> dict[str, Any]:
        settings = self._current()
        return {
            "name": self._name,
            "mode": settings.mode.value,
            "delay_seconds": settings.delay_seconds,
            "retry_after_seconds": settings.retry_after_seconds,
            "request_count": self.request_count,
            "call_counts": self.call_counts(),
        }


# ---------------------------------------------------------------------- request helpers


def _scalars(body: dict[str, Any] | None) -> dict[str, str]:
    if body is None:
        return {}
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in body.items()
        if isinstance(value, str | int | float | bool)
    }


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def _read_form(request: web.Request) -> tuple[dict[str, str], bytes | None, str | None]:
    """A multipart form's text fields, its ``file`` content and file name (None if absent)."""
    fields: dict[str, str] = {}
    audio: bytes | None = None
    filename: str | None = None
    if not request.content_type.startswith("multipart/"):
        await request.read()
        return fields, audio, filename
    try:
        form = await request.post()
    except ValueError:
        return fields, audio, filename
    for key, value in form.items():
        if isinstance(value, web.FileField):
            data = await asyncio.to_thread(value.file.read)
            if key == "file":
                audio, filename = data, value.filename
        else:
            fields[key] = str(value)
    return fields, audio, filename


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


# ---------------------------------------------------------------------- responses


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex


def _openai_error(
    status: int, message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    payload = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(payload, status=status, headers={"x-request-id": _request_id()})


def _openai_invalid(
    message: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    return _openai_error(400, message, "invalid_request_error", param=param, code=code)


def _elevenlabs_detail(status: int, state: str, message: str) -> web.Response:
    return web.json_response(
        {"detail": {"status": state, "message": message}},
        status=status,
        headers={"request-id": uuid.uuid4().hex},
    )


def _elevenlabs_invalid(given: object, kind: str, message: str, loc: list[Any]) -> web.Response:
    """FastAPI's 422 validation body, as ElevenLabs answers a malformed request."""
    item = {"type": kind, "loc": loc, "msg": message, "input": given}
    if isinstance(given, bytes):
        item["input"] = given.decode("utf-8", "replace")
    return web.json_response({"detail": [item]}, status=422)


def _deepgram_error(status: int, code: str, message: str) -> web.Response:
    request_id = str(uuid.uuid4())
    return web.json_response(
        {"err_code": code, "err_msg": message, "request_id": request_id},
        status=status,
        headers={"dg-request-id": request_id},
    )


def _unauthorized(api: _Api, *, missing: bool) -> web.Response:
    match api:
        case "openai":
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                if missing
                else "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            code = None if missing else "invalid_api_key"
            return _openai_error(401, message, "invalid_request_error", code=code)
        case "elevenlabs":
            if missing:
                return _elevenlabs_detail(
                    401,
                    "needs_authorization",
                    "Neither authorization header nor xi-api-key received, please provide one.",
                )
            return _elevenlabs_detail(401, "invalid_api_key", "Invalid API key")
        case "deepgram":
            return _deepgram_error(401, "INVALID_AUTH", "Invalid credentials.")


def _error(
    api: _Api, status: Literal[400, 429, 500], *, retry: float = 0.0, stt: bool = False
) -> web.Response:
    """The answer of the ERROR_500, RATE_LIMITED and BAD_REQUEST modes in ``api``'s shape.

    BAD_REQUEST says the text is too long (TTS) or the audio is unreadable (``stt``).
    """
    match api, status:
        case "openai", 500:
            return _openai_error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        case "openai", 429:
            return _openai_error(
                429,
                f"Rate limit reached for requests. Please try again in {retry:g}s.",
                "requests",
                code="rate_limit_exceeded",
            )
        case "openai", _ if stt:
            return _openai_invalid(
                "Audio file might be corrupted or unsupported", param="file", code="invalid_value"
            )
        case "openai", _:
            return _openai_invalid(
                f"[{{'type': 'string_too_long', 'loc': ('body', 'input'), 'msg': 'String should "
                f"have at most {_OPENAI_MAX_INPUT} characters'}}]"
            )
        case "elevenlabs", 500:
            return _elevenlabs_detail(
                500, "internal_server_error", "An internal server error occurred."
            )
        case "elevenlabs", 429:
            return _elevenlabs_detail(
                429,
                "too_many_concurrent_requests",
                "Too many concurrent requests. Your current subscription is associated with a "
                "maximum of 2 concurrent requests (running in parallel).",
            )
        case "elevenlabs", _:
            return _elevenlabs_detail(
                400,
                "max_character_limit_exceeded",
                f"Text is too long. Maximum text length is {_ELEVENLABS_MAX_TEXT} characters.",
            )
        case "deepgram", 500:
            return _deepgram_error(
                500, "INTERNAL_SERVER_ERROR", "An internal server error occurred."
            )
        case "deepgram", 429:
            return _deepgram_error(
                429, "TOO_MANY_REQUESTS", "Too many requests. Please try again later"
            )
        case _:
            return _deepgram_error(
                400,
                "Bad Request",
                "Bad Request: failed to process audio: corrupt or unsupported data",
            )


def _words(text: str, *, punctuated: bool) -> list[dict[str, Any]]:
    words: list[dict[str, Any]] = []
    for index, token in enumerate(text.split()):
        word: dict[str, Any] = {
            "word": re.sub(r"[^\w']", "", token).lower() or token,
            "start": round(index * _SECONDS_PER_WORD, 3),
            "end": round((index + 1) * _SECONDS_PER_WORD, 3),
            "confidence": 0.98,
        }
        if punctuated:
            word["punctuated_word"] = token
        words.append(word)
    return words


def _is_true(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1", "yes")


def _deepgram_result(audio: bytes, query: dict[str, str]) -> dict[str, Any]:
    text = _heard(audio)
    model = query.get("model", "base")
    punctuated = _is_true(query.get("smart_format")) or _is_true(query.get("punctuate"))
    alternative = {
        "transcript": text,
        "confidence": 0.98,
        "words": _words(text, punctuated=punctuated),
    }
    channel: dict[str, Any] = {"alternatives": [alternative]}
    if _is_true(query.get("detect_language")):
        channel["detected_language"] = query.get("language", "en")
        channel["language_confidence"] = 0.99
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    return {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": str(uuid.uuid4()),
            "sha256": hashlib.sha256(audio).hexdigest(),
            "created": created.replace("+00:00", "Z"),
            "duration": fake_duration(audio),
            "channels": 1,
            "models": [_DEEPGRAM_MODEL_UUID],
            "model_info": {
                _DEEPGRAM_MODEL_UUID: {"name": f"general-{model}", "version": "1", "arch": model}
            },
        },
        "results": {"channels": [channel]},
    }


def _verbose_transcription(
    text: str, duration: float, language: str | None, filename: str | None
) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": language or "english",
        "duration": duration,
        "text": text,
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": duration,
                "text": text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": -0.1,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.01,
            }
        ],
        "words": [
            {"word": word["punctuated_word"], "start": word["start"], "end": word["end"]}
            for word in _words(text, punctuated=True)
        ],
    }


# ---------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run one server in the foreground until SIGINT or SIGTERM."""
    parser = cli_parser(
        "python -m loopback.audio_server",
        "Fake ElevenLabs/OpenAI audio/Deepgram server; control it via POST /_loopback/mode.",
        port=8011,
        name="audio",
    )
    add_mode_arguments(parser, list(FailureMode))
    parser.add_argument("--retry-after", type=float, default=1.0, help="429 Retry-After seconds")
    parser.add_argument("--api-key", default=None, help="the only credential accepted")
    args = parse_cli_args(parser, argv)

    server = AudioServer(args.port, args.name, host=args.host, api_key=args.api_key)
    server.set_mode(args.mode, delay_seconds=args.delay, retry_after_seconds=args.retry_after)
    return serve_until_signalled(
        server,
        args.name,
        lambda: (
            f"{args.name}: ElevenLabs and Deepgram at {server.base_url}, OpenAI at "
            f"{server.openai_base_url}, mode={server.mode}"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
