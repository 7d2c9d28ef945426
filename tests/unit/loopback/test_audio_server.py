"""The loopback audio server, driven through real clients (litellm, httpx)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from loopback.audio_server import (
    AUDIO_MAGIC,
    ID3_HEADER,
    AudioServer,
    FailureMode,
    fake_audio,
    fake_duration,
    transcript_of,
)

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Item.*ReadOnly:UserWarning"),
]

VOICE = "21m00Tcm4TlvDq8ikWAM"
ELEVEN_KEY = {"xi-api-key": "xi-test"}
OPENAI_KEY = {"Authorization": "Bearer sk-test"}
DEEPGRAM_KEY = {"Authorization": "Token dg-test"}


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("AudioServer-")]


@pytest.fixture
def server() -> Iterator[AudioServer]:
    audio = AudioServer(name="voice")
    audio.start()
    try:
        yield audio
    finally:
        audio.stop()
        assert _server_threads() == []


@pytest.fixture
def litellm() -> Any:
    import litellm

    litellm.suppress_debug_info = True
    return litellm


# ---------------------------------------------------------------------- requests per route


#: Bytes that start like an MPEG frame: audio the loopback cannot transcribe but accepts.
NOISE = b"\xff\xfbnoise"


def eleven_tts(server: AudioServer, text: str = "hello", **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", ELEVEN_KEY)
    return httpx.post(
        f"{server.base_url}/v1/text-to-speech/{VOICE}",
        params={"output_format": "mp3_44100_128"},
        json={"text": text, "model_id": "eleven_multilingual_v2"},
        headers=headers,
        **kwargs,
    )


def openai_tts(server: AudioServer, text: str = "hello", **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", OPENAI_KEY)
    return httpx.post(
        f"{server.openai_base_url}/audio/speech",
        json={"model": "tts-1", "input": text, "voice": "alloy"},
        headers=headers,
        **kwargs,
    )


def openai_stt(server: AudioServer, audio: bytes = NOISE, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", OPENAI_KEY)
    data = {"model": "whisper-1", **kwargs.pop("data", {})}
    return httpx.post(
        f"{server.openai_base_url}/audio/transcriptions",
        files={"file": ("a.mp3", audio, "audio/mpeg")},
        data=data,
        headers=headers,
        **kwargs,
    )


def deepgram_stt(server: AudioServer, audio: bytes = NOISE, **kwargs: Any) -> httpx.Response:
    headers = {"Content-Type": "audio/mpeg", **kwargs.pop("headers", DEEPGRAM_KEY)}
    return httpx.post(
        f"{server.base_url}/v1/listen",
        params={"model": "nova-2", "smart_format": "true", "language": "en"},
        content=audio,
        headers=headers,
        **kwargs,
    )


CALLS: dict[str, Callable[..., httpx.Response]] = {
    "elevenlabs": eleven_tts,
    "openai_tts": openai_tts,
    "openai_stt": openai_stt,
    "deepgram": deepgram_stt,
}


def error_kind(api: str, response: httpx.Response) -> str:
    """The error's type in each API's own body shape."""
    body = response.json()
    if api == "elevenlabs":
        return str(body["detail"]["status"])
    if api == "deepgram":
        assert body["request_id"]
        return str(body["err_code"])
    error = body["error"]
    return str(error["code"] or error["type"])


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target`` in a thread; the dict gets ``result`` or ``error``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# ---------------------------------------------------------------------- fake audio


def test_fake_audio_round_trips_and_is_deterministic() -> None:
    audio = fake_audio("Grüße, world!", voice="alloy", provider="openai")

    assert audio == fake_audio("Grüße, world!", voice="alloy", provider="openai")
    assert audio.startswith(ID3_HEADER + AUDIO_MAGIC)
    assert audio == ID3_HEADER + AUDIO_MAGIC + (
        '{"provider":"openai","text":"Grüße, world!","voice":"alloy"}'.encode()
    )
    assert transcript_of(audio) == "Grüße, world!"
    assert transcript_of(audio[len(ID3_HEADER) :]) == "Grüße, world!"  # the tag is optional
    assert transcript_of(b"") is None
    assert transcript_of(b"ID3\x04\x00\x00\x00\x00\x00\x00real mp3 frames") is None
    assert transcript_of(AUDIO_MAGIC + b"{not json") is None
    assert fake_duration(fake_audio("one two three")) == pytest.approx(1.2)
    assert fake_duration(b"x" * 32_000) == pytest.approx(2.0)


# ---------------------------------------------------------------------- litellm round trips


async def test_litellm_openai_speech_then_transcription(server: AudioServer, litellm: Any) -> None:
    speech = await litellm.aspeech(
        model="openai/tts-1",
        input="the answer is forty-two",
        voice="alloy",
        api_base=server.openai_base_url,
        api_key="k",
        max_retries=0,
    )
    audio = speech.content  # also speech.read() and await speech.aread()
    assert audio == fake_audio("the answer is forty-two", voice="alloy", provider="openai")
    assert speech.content_type == "audio/mpeg"

    transcription = await litellm.atranscription(
        model="openai/whisper-1",
        file=("speech.mp3", audio),
        api_base=server.openai_base_url,
        api_key="k",
        max_retries=0,
    )
    assert transcription.text == "the answer is forty-two"

    tts, stt = server.calls
    assert (tts.route, tts.path, tts.text, tts.voice) == (
        "openai_tts",
        "/v1/audio/speech",
        "the answer is forty-two",
        "alloy",
    )
    assert (stt.route, stt.path, stt.audio) == ("openai_stt", "/v1/audio/transcriptions", audio)
    assert stt.fields["model"] == "whisper-1"
    assert stt.fields["response_format"] == "verbose_json"  # litellm's default
    assert server.requests[0].headers["authorization"] == "Bearer k"
    assert (server.tts_count, server.stt_count) == (1, 1)


async def test_litellm_speech_formats_and_text_transcription(
    server: AudioServer, litellm: Any
) -> None:
    wav = await litellm.aspeech(
        model="openai/tts-1",
        input="wave",
        voice="nova",
        response_format="wav",
        api_base=server.openai_base_url,
        api_key="k",
        max_retries=0,
    )
    assert wav.content_type == "audio/wav"
    assert transcript_of(await wav.aread()) == "wave"

    text = await litellm.atranscription(
        model="openai/whisper-1",
        file=("noise.mp3", b"\xff\xfb" * 100),
        response_format="text",
        api_base=server.openai_base_url,
        api_key="k",
        max_retries=0,
    )
    assert text.text == "unrecognised audio of 200 bytes"


async def test_litellm_elevenlabs_and_deepgram_round_trip(
    server: AudioServer, litellm: Any
) -> None:
    speech = await litellm.aspeech(
        model="elevenlabs/eleven_multilingual_v2",
        input="hello from eleven",
        voice=VOICE,
        api_base=server.base_url,
        api_key="xi-k",
    )
    assert transcript_of(speech.content) == "hello from eleven"
    transcription = await litellm.atranscription(
        model="deepgram/nova-2",
        file=("a.mp3", speech.content),
        api_base=server.base_url + "/v1",
        api_key="dg-k",
    )
    assert transcription.text == "hello from eleven"

    tts, stt = server.calls
    assert (tts.path, tts.voice, tts.fields["model_id"]) == (
        f"/v1/text-to-speech/{VOICE}",
        VOICE,
        "eleven_multilingual_v2",
    )
    assert (stt.path, stt.query["model"]) == ("/v1/listen", "nova-2")
    assert server.requests[0].headers["xi-api-key"] == "xi-k"
    assert server.requests[1].headers["authorization"] == "Token dg-k"


async def test_litellm_error_modes_map_to_exception_types(
    server: AudioServer, litellm: Any
) -> None:
    from litellm.exceptions import (
        APIConnectionError,
        BadRequestError,
        InternalServerError,
        RateLimitError,
        Timeout,
    )

    async def speech(**extra: Any) -> Any:
        return await litellm.aspeech(
            model="openai/tts-1",
            input="x",
            voice="alloy",
            api_base=server.openai_base_url,
            api_key="k",
            max_retries=0,
            **extra,
        )

    async def transcription(**extra: Any) -> Any:
        return await litellm.atranscription(
            model="openai/whisper-1",
            file=("a.mp3", b"x"),
            api_base=server.openai_base_url,
            api_key="k",
            max_retries=0,
            **extra,
        )

    expected: list[tuple[FailureMode, type[Exception], int]] = [
        (FailureMode.ERROR_500, InternalServerError, 500),
        (FailureMode.RATE_LIMITED, RateLimitError, 429),
        (FailureMode.BAD_REQUEST, BadRequestError, 400),
        (FailureMode.HANG, Timeout, 408),
        (FailureMode.REFUSE, APIConnectionError, 500),
    ]
    for mode, error, status in expected:
        server.set_mode(mode, retry_after_seconds=0.1)
        server.reset_requests()
        for call in (speech, transcription):
            with pytest.raises(error) as raised:
                await call(timeout=0.5)
            assert raised.value.status_code == status, (mode, call)
        assert server.request_count == (0 if mode is FailureMode.REFUSE else 2), mode
    server.set_mode(FailureMode.OK)


async def test_litellm_num_retries_zero_still_lets_the_sdk_retry(
    server: AudioServer, litellm: Any
) -> None:
    from litellm.exceptions import InternalServerError

    server.set_mode(FailureMode.ERROR_500)
    with pytest.raises(InternalServerError):
        await litellm.aspeech(
            model="openai/tts-1",
            input="x",
            voice="alloy",
            api_base=server.openai_base_url,
            api_key="k",
            num_retries=0,  # not passed to the openai SDK: its own 2 retries remain
        )
    assert server.request_count == 3


# ---------------------------------------------------------------------- wire shapes (httpx)


def test_elevenlabs_answers_mpeg_and_streams(server: AudioServer) -> None:
    response = eleven_tts(server, "plain")
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    assert response.content == fake_audio("plain", voice=VOICE, provider="elevenlabs")

    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/text-to-speech/{VOICE}/stream",
        json={"text": "streamed speech", "model_id": "eleven_flash_v2_5"},
        headers=ELEVEN_KEY,
    ) as stream:
        chunks = list(stream.iter_raw())
    assert stream.headers["transfer-encoding"] == "chunked"
    assert transcript_of(b"".join(chunks)) == "streamed speech"

    pcm = httpx.post(
        f"{server.base_url}/v1/text-to-speech/{VOICE}",
        params={"output_format": "pcm_16000"},
        json={"text": "raw"},
        headers=ELEVEN_KEY,
    )
    assert pcm.headers["content-type"] == "audio/pcm"
    first = server.calls[0]
    assert (first.query, first.voice, first.text) == (
        {"output_format": "mp3_44100_128"},
        VOICE,
        "plain",
    )
    assert server.call_counts()["elevenlabs_tts"] == 3


def test_elevenlabs_validation_is_fastapi_422(server: AudioServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/text-to-speech/{VOICE}", json={"model_id": "m"}, headers=ELEVEN_KEY
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "text"]


def test_openai_speech_content_types_and_validation(server: AudioServer) -> None:
    for response_format, content_type in [("mp3", "audio/mpeg"), ("opus", "audio/opus")]:
        response = httpx.post(
            f"{server.openai_base_url}/audio/speech",
            json={
                "model": "tts-1",
                "input": "x",
                "voice": "echo",
                "response_format": response_format,
            },
            headers=OPENAI_KEY,
        )
        assert response.headers["content-type"] == content_type
    missing = httpx.post(
        f"{server.openai_base_url}/audio/speech", json={"model": "tts-1"}, headers=OPENAI_KEY
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"


def test_openai_transcription_formats(server: AudioServer) -> None:
    audio = fake_audio("one two")
    assert openai_stt(server, audio).json()["text"] == "one two"
    text = openai_stt(server, audio, data={"response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "one two"
    verbose = openai_stt(server, audio, data={"response_format": "verbose_json", "language": "en"})
    assert verbose.json()["duration"] == pytest.approx(0.8)
    assert verbose.json()["language"] == "en"
    assert "00:00:00,800" in openai_stt(server, audio, data={"response_format": "srt"}).text
    assert server.call_counts()["openai_stt"] == 4


def test_bytes_that_are_no_audio_are_refused_as_the_real_apis_refuse_them(
    server: AudioServer,
) -> None:
    openai = openai_stt(server, b"junk" * 20)
    assert openai.status_code == 400
    assert openai.json()["error"]["message"] == "Audio file might be corrupted or unsupported"
    deepgram = deepgram_stt(server, b"junk" * 20)
    assert deepgram.status_code == 400
    assert "corrupt or unsupported data" in deepgram.json()["err_msg"]
    assert openai_stt(server, fake_audio("fine")).status_code == 200


def test_deepgram_answers_its_json_shape(server: AudioServer) -> None:
    response = deepgram_stt(server, fake_audio("Hello, Deepgram."))
    assert response.status_code == 200
    body = response.json()
    metadata = body["metadata"]
    assert metadata["channels"] == 1
    assert metadata["duration"] == pytest.approx(0.8)
    assert metadata["request_id"] and metadata["created"] and metadata["models"]
    [alternative] = body["results"]["channels"][0]["alternatives"]
    assert alternative["transcript"] == "Hello, Deepgram."
    assert alternative["confidence"] == pytest.approx(0.98)
    assert [w["word"] for w in alternative["words"]] == ["hello", "deepgram"]
    assert [w["punctuated_word"] for w in alternative["words"]] == ["Hello,", "Deepgram."]
    assert server.calls[0].query == {"model": "nova-2", "smart_format": "true", "language": "en"}

    other = deepgram_stt(server, b"\xff\xfb" * 32).json()
    transcript = other["results"]["channels"][0]["alternatives"][0]["transcript"]
    assert transcript == "unrecognised audio of 64 bytes"
    junk = deepgram_stt(server, b"\x00" * 64)
    assert junk.status_code == 400
    assert "corrupt or unsupported data" in junk.json()["err_msg"]
    bearer = deepgram_stt(server, headers={"Authorization": "Bearer temp-jwt"})
    assert bearer.status_code == 200
    empty = deepgram_stt(server, b"")
    assert empty.status_code == 400
    assert empty.json()["err_code"] == "Bad Request"


def test_health_and_control_are_not_recorded(server: AudioServer) -> None:
    server.set_mode(FailureMode.ERROR_500)
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    described = httpx.get(f"{server.base_url}/_loopback/mode").json()
    assert described["mode"] == "error_500"
    assert described["call_counts"]["deepgram_stt"] == 0
    assert server.request_count == 0


# ---------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("api", "kind"),
    [
        ("elevenlabs", "needs_authorization"),
        ("openai_tts", "invalid_request_error"),
        ("openai_stt", "invalid_request_error"),
        ("deepgram", "INVALID_AUTH"),
    ],
)
def test_missing_credentials_are_401_in_each_apis_shape(
    server: AudioServer, api: str, kind: str
) -> None:
    response = CALLS[api](server, headers={})
    assert response.status_code == 401
    assert error_kind(api, response) == kind
    assert server.request_count == 1


def test_wrong_scheme_is_missing_and_api_key_must_match() -> None:
    with AudioServer(name="strict", api_key="right") as strict:
        assert deepgram_stt(strict, headers={"Authorization": "Bearer right"}).status_code == 200
        assert deepgram_stt(strict, headers={"Authorization": "right"}).status_code == 401
        assert openai_tts(strict, headers={"Authorization": "Token right"}).status_code == 401

        wrong_eleven = eleven_tts(strict, headers={"xi-api-key": "wrong"})
        wrong_openai = openai_stt(strict, headers={"Authorization": "Bearer wrong"})
        wrong_deepgram = deepgram_stt(strict, headers={"Authorization": "Token wrong"})
        assert wrong_eleven.status_code == wrong_openai.status_code == 401
        assert wrong_deepgram.status_code == 401
        assert error_kind("elevenlabs", wrong_eleven) == "invalid_api_key"
        assert error_kind("openai_stt", wrong_openai) == "invalid_api_key"
        assert error_kind("deepgram", wrong_deepgram) == "INVALID_AUTH"
        assert eleven_tts(strict, headers={"xi-api-key": "right"}).status_code == 200


# ---------------------------------------------------------------------- failure modes


@pytest.mark.parametrize(
    ("api", "kinds"),
    [
        ("elevenlabs", ("internal_server_error", "too_many_concurrent_requests")),
        ("openai_tts", ("server_error", "rate_limit_exceeded")),
        ("openai_stt", ("server_error", "rate_limit_exceeded")),
        ("deepgram", ("INTERNAL_SERVER_ERROR", "TOO_MANY_REQUESTS")),
    ],
)
def test_error_500_and_rate_limited(server: AudioServer, api: str, kinds: tuple[str, str]) -> None:
    server.set_mode(FailureMode.ERROR_500)
    failed = CALLS[api](server)
    server.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=7)
    limited = CALLS[api](server)

    assert failed.status_code == 500
    assert error_kind(api, failed) == kinds[0]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert error_kind(api, limited) == kinds[1]
    assert [call.mode for call in server.calls] == [
        FailureMode.ERROR_500,
        FailureMode.RATE_LIMITED,
    ]


@pytest.mark.parametrize(
    ("api", "kind"),
    [
        ("elevenlabs", "max_character_limit_exceeded"),
        ("openai_tts", "invalid_request_error"),
        ("openai_stt", "invalid_value"),
        ("deepgram", "Bad Request"),
    ],
)
def test_bad_request(server: AudioServer, api: str, kind: str) -> None:
    server.set_mode(FailureMode.BAD_REQUEST)
    response = CALLS[api](server)
    assert response.status_code == 400
    assert error_kind(api, response) == kind


@pytest.mark.parametrize("api", list(CALLS))
def test_hang_then_ok_answers_the_waiting_request(server: AudioServer, api: str) -> None:
    server.set_mode(FailureMode.HANG)
    with pytest.raises(httpx.ReadTimeout):
        CALLS[api](server, timeout=0.3)
    thread, outcome = in_thread(lambda: CALLS[api](server, timeout=10))
    assert server.wait_for_requests(2, timeout=5)
    time.sleep(0.1)
    assert thread.is_alive()

    server.set_mode(FailureMode.OK)
    thread.join(5)
    assert outcome["result"].status_code == 200


def test_slow_answers_after_the_delay_and_stop_releases_hangs(server: AudioServer) -> None:
    server.set_mode(FailureMode.SLOW, delay_seconds=0.3)
    started = time.monotonic()
    assert deepgram_stt(server).status_code == 200
    assert time.monotonic() - started >= 0.3

    server.set_mode(FailureMode.HANG)
    thread, outcome = in_thread(lambda: openai_tts(server, timeout=10))
    assert server.wait_for_requests(2, timeout=5)
    server.stop()
    thread.join(5)
    assert isinstance(outcome.get("error"), httpx.TransportError)


def test_refuse_closes_the_port_and_ok_reopens_it(server: AudioServer) -> None:
    port = server.port
    server.set_mode(FailureMode.REFUSE)
    for call in CALLS.values():
        with pytest.raises(httpx.ConnectError):
            call(server, timeout=2)
    assert server.request_count == 0

    server.set_mode(FailureMode.OK)
    assert server.port == port
    assert eleven_tts(server).status_code == 200


def test_control_endpoint_switches_modes_and_reverts(server: AudioServer) -> None:
    control = f"{server.base_url}/_loopback/mode"
    answer = httpx.post(control, json={"mode": "rate_limited", "retry_after_seconds": 2})
    assert answer.json()["mode"] == "rate_limited"
    assert openai_tts(server).headers["retry-after"] == "2"

    server.set_mode(FailureMode.ERROR_500, revert_after_seconds=0.2)
    time.sleep(0.5)
    assert server.mode is FailureMode.OK
    assert httpx.post(control, json={"mode": "nonsense"}).status_code == 400


def test_call_counts_and_reset(server: AudioServer) -> None:
    eleven_tts(server)
    openai_tts(server)
    openai_tts(server)
    deepgram_stt(server)
    assert server.call_counts() == {
        "elevenlabs_tts": 1,
        "openai_tts": 2,
        "openai_stt": 0,
        "deepgram_stt": 1,
    }
    assert (server.tts_count, server.stt_count, server.request_count) == (3, 1, 4)
    server.reset_requests()
    assert server.calls == [] and server.request_count == 0 and server.tts_count == 0


def test_cli_serves_until_terminated() -> None:
    with AudioServer() as probe:
        port = probe.port
    process = subprocess.Popen(
        [sys.executable, "-m", "loopback.audio_server", "--port", str(port), "--name", "cli"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert f"http://127.0.0.1:{port}" in process.stdout.readline()
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.json() == {"status": "ok", "name": "cli"}
    finally:
        process.terminate()
        assert process.wait(10) == 0
