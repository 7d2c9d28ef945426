"""Scenarios 3 and 4 end to end: voice through the STT and TTS chains, uploads through the
storage chain, queued uploads on ``upload.retry``, backups on ``backup.tasks``.

Real worker processes; loopback servers speak the ElevenLabs, OpenAI audio and Deepgram
APIs, and moto's S3 server stands for S3 (stopped and started for real).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from loopback import FailureMode
from loopback.audio_server import AudioServer, fake_audio, transcript_of
from loopback.s3_server import S3Server
from sa01.core.settings import Settings
from schemas.codec import decode_message, encode_message
from schemas.headers import ERRORS_MESSAGE
from schemas.messages import (
    Attachment,
    BackupTask,
    ConversationInbound,
    ConversationReply,
    UploadTask,
)
from tests.support.kafka import consume, produce_inbound, produce_raw
from tests.support.status import state_of, wait_status
from tests.support.worker import WorkerFactory, WorkerProcess

pytestmark = pytest.mark.integration

VOICE_FALLBACK = "Voice in fallback mode"


def multimodal_settings(
    stack: Settings,
    tmp_path: Path,
    s3: S3Server,
    *,
    elevenlabs: AudioServer | None = None,
    openai_audio: AudioServer | None = None,
    deepgram: AudioServer | None = None,
    **overrides: object,
) -> Settings:
    values: dict[str, object] = {
        "s3_endpoint_url": s3.endpoint_url,
        "s3_bucket": f"up-{uuid.uuid4().hex[:10]}",
        "aws_access_key_id": SecretStr("test"),
        "aws_secret_access_key": SecretStr("test"),
        "storage_chain": "s3,local,redis",
        "storage_local_root": str(tmp_path / "storage"),
        "backup_local_root": str(tmp_path / "backup"),
        "storage_timeout_seconds": 3.0,
        "audio_timeout_seconds": 3.0,
        "audio_breaker_consecutive_failures": 1,
        "audio_breaker_wait_seconds": 1.0,
        "storage_breaker_consecutive_failures": 1,
        "storage_breaker_wait_seconds": 1.0,
        "upload_retry_backoff_seconds": 0.2,
        "upload_retry_max_backoff_seconds": 1.0,
        "upload_max_attempts": 10_000,
        "health_probes": "postgres,storage,audio",
        "health_interval_seconds": 0.5,
    }
    if elevenlabs is not None:
        values["elevenlabs_url"] = elevenlabs.base_url
        values["elevenlabs_api_key"] = SecretStr("xi-test")
    if openai_audio is not None:
        values["openai_audio_api_base"] = openai_audio.openai_base_url
        values["openai_api_key"] = SecretStr("sk-test")
    if deepgram is not None:
        values["deepgram_url"] = deepgram.base_url
        values["deepgram_api_key"] = SecretStr("dg-test")
    values.update(overrides)
    return stack.model_copy(update=values)


def voice_message(
    spoken: str, *, client_text: str = "", session: str = "voice"
) -> ConversationInbound:
    message_id = str(uuid.uuid4())
    audio = fake_audio(spoken, provider="microphone")
    return ConversationInbound(
        message_id=message_id,
        tenant_id="tenant-a",
        session_id=session,
        agent_id="agent-1",
        text=client_text,
        created_at=datetime.now(UTC),
        voice=True,
        attachments=(
            Attachment(
                attachment_id="recording",
                content_type="audio/mpeg",
                size_bytes=len(audio),
                storage_key=f"voice-in/{message_id}.mp3",
                content_base64=base64.b64encode(audio).decode(),
            ),
        ),
    )


def upload_message(n: int, data: bytes, *, session: str | None = None) -> ConversationInbound:
    message_id = str(uuid.uuid4())
    return ConversationInbound(
        message_id=message_id,
        tenant_id="tenant-a",
        session_id=session or f"upload-{n % 20}",
        agent_id="agent-1",
        text=f"here is file {n}",
        created_at=datetime.now(UTC),
        attachments=(
            Attachment(
                attachment_id=f"file-{n}",
                content_type="application/octet-stream",
                size_bytes=len(data),
                storage_key=f"file-{n}.bin",
                content_base64=base64.b64encode(data).decode(),
            ),
        ),
    )


def replies_to(settings: Settings, count: int, timeout: float = 120) -> list[ConversationReply]:
    records = consume(settings, settings.topic("conversation.outbound"), count, timeout=timeout)
    return [decode_message(ConversationReply, r.value) for r in records]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def unusable_dir(tmp_path: Path, name: str) -> Path:
    """A directory path that cannot be created (a regular file stands in its way)."""
    blocker = tmp_path / f"{name}-blocker"
    blocker.write_text("a file where a directory should be")
    return blocker / name


def objects(s3: S3Server, bucket: str) -> dict[str, bytes]:
    """The bucket's objects; none while the bucket does not exist yet."""
    try:
        return s3.objects(bucket)
    except Exception as exc:
        if "NoSuchBucket" in type(exc).__name__ or "NoSuchBucket" in str(exc):
            return {}
        raise


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []


def metric(worker: WorkerProcess, line_start: str) -> float:
    for line in worker.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------- voice


def test_a_voice_message_is_transcribed_answered_and_spoken_by_the_primaries(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
    elevenlabs: AudioServer,
    openai_audio: AudioServer,
    deepgram: AudioServer,
) -> None:
    settings = multimodal_settings(
        stack, tmp_path, s3, elevenlabs=elevenlabs, openai_audio=openai_audio, deepgram=deepgram
    )
    workers.start(settings)
    message = voice_message("what is the weather like")
    produce_inbound(settings, [message])

    [reply] = replies_to(settings, 1)

    assert reply.text == "echo: what is the weather like"
    assert reply.voice_provider == "elevenlabs"
    assert reply.notices == ()
    assert not {"tts", "stt"} & set(reply.degraded)
    [spoken] = reply.attachments
    stored = objects(s3, settings.s3_bucket)
    assert transcript_of(stored[spoken.storage_key]) == reply.text
    assert spoken.size_bytes == len(stored[spoken.storage_key])
    # The user's recording is an upload like any other: in the primary store.
    assert f"tenant-a/uploads/{message.attachments[0].storage_key}" in stored
    assert openai_audio.call_counts()["openai_stt"] == 1
    assert elevenlabs.call_counts()["elevenlabs_tts"] == 1
    assert deepgram.stt_count == 0


def test_each_audio_primary_failing_moves_the_work_to_the_next_link_and_the_user_is_told(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
    elevenlabs: AudioServer,
    openai_audio: AudioServer,
    deepgram: AudioServer,
) -> None:
    settings = multimodal_settings(
        stack,
        tmp_path,
        s3,
        elevenlabs=elevenlabs,
        openai_audio=openai_audio,
        deepgram=deepgram,
        audio_breaker_wait_seconds=600.0,  # an opened circuit stays open for the checks
    )
    worker = workers.start(settings)

    # TTS primary refuses connections: OpenAI speaks.
    elevenlabs.set_mode(FailureMode.REFUSE)
    produce_inbound(settings, [voice_message("first question", session="v")])
    [first] = replies_to(settings, 1)
    assert first.text == "echo: first question"
    assert first.voice_provider == "openai"
    assert VOICE_FALLBACK in first.notices
    assert "tts" in first.degraded and "stt" not in first.degraded
    assert transcript_of(objects(s3, settings.s3_bucket)[first.attachments[0].storage_key])

    # OpenAI audio answers 500 as well: Deepgram transcribes; kokoro is not installed,
    # so the client's own voice speaks the reply.
    openai_audio.set_mode(FailureMode.ERROR_500)
    produce_inbound(settings, [voice_message("second question", session="v")])
    second = replies_to(settings, 2)[1]
    assert second.text == "echo: second question"
    assert deepgram.stt_count == 1
    assert second.voice_provider == "native"
    assert second.attachments == ()
    assert {"stt", "tts"} <= set(second.degraded)
    assert VOICE_FALLBACK in second.notices

    # Every STT link down: the client's own transcript is answered; without one, the
    # user is still answered, with a request to type.
    deepgram.set_mode(FailureMode.REFUSE)
    produce_inbound(
        settings,
        [
            voice_message("third question", client_text="what the phone heard", session="v"),
            voice_message("fourth question", session="v"),
        ],
    )
    replies = replies_to(settings, 4)
    third, fourth = replies[2], replies[3]
    assert third.text == "echo: what the phone heard"
    assert third.voice_provider == "native"
    assert fourth.model == "none"
    assert "type" in fourth.text
    assert VOICE_FALLBACK in third.notices and VOICE_FALLBACK in fourth.notices

    # Health of each provider shows like any other service.
    wait_status(worker, state_of("tts.elevenlabs", "unavailable"))
    status, _ = wait_status(worker, state_of("tts.kokoro", "unavailable"))
    assert "not installed" in status["services"]["tts.kokoro"]["reason"]
    wait_status(worker, state_of("stt", "unavailable"))
    assert (
        metric(
            worker,
            'provider_failover_count_total{chain="tts",from_provider="elevenlabs",to_provider="openai"}',
        )
        >= 1
    )


# --------------------------------------------------------------------------- storage


def test_uploads_while_every_store_is_down_are_queued_then_all_stored_once_in_the_primary(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
) -> None:
    local_root = unusable_dir(tmp_path, "storage")
    settings = multimodal_settings(
        stack, tmp_path, s3, storage_chain="s3,local", storage_local_root=str(local_root)
    )
    s3.stop()
    worker = workers.start(settings)
    wait_status(worker, state_of("storage", "unavailable"))

    count = 200
    payloads = {n: f"upload {n} ".encode() * 20 for n in range(count)}
    produce_inbound(settings, [upload_message(n, data) for n, data in payloads.items()])
    replies = replies_to(settings, count, timeout=180)
    assert len(replies) == count
    assert all("Upload queued" in r.notices for r in replies)
    assert all("storage" in r.degraded for r in replies)

    # The local store comes back first: queued uploads are parked there meanwhile, as many
    # as the tenant's share of the read-ahead; its further tasks wait in Kafka, unacked,
    # so that one tenant's waiting tasks leave room for the others'.
    local_root.parent.unlink()
    local_root.mkdir(parents=True)
    share = int(settings.tenant_max_share * settings.background_read_ahead)
    held = min(count, share)
    wait_for(lambda: len(files_under(local_root)) == held, 120, "uploads parked locally")
    time.sleep(2.0)
    assert len(files_under(local_root)) == held, "the tenant took more than its share"

    # Then S3: every upload reaches it once and no temporary copy is left.
    s3.start()
    wait_for(lambda: len(objects(s3, settings.s3_bucket)) == count, 180, "uploads in S3")
    wait_for(lambda: not files_under(local_root), 60, "temporary copies deleted")
    stored = objects(s3, settings.s3_bucket)
    assert stored == {f"tenant-a/uploads/file-{n}.bin": data for n, data in payloads.items()}
    assert metric(worker, 'upload_tasks_total{outcome="dead_lettered"}') == 0
    assert consume(settings, settings.topic("upload.retry.dlq"), 1, timeout=2, settle=0) == []
    assert (
        len(consume(settings, settings.topic("upload.retry"), count, timeout=60, settle=2)) == count
    )
    wait_status(worker, state_of("storage", "healthy"))


def test_uploads_taken_by_a_temporary_store_move_to_the_primary_when_it_recovers(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
) -> None:
    settings = multimodal_settings(stack, tmp_path, s3, storage_chain="s3,local")
    local_root = Path(settings.storage_local_root)
    s3.stop()
    worker = workers.start(settings)
    wait_status(
        worker,
        lambda doc: (
            state_of("storage.s3", "unavailable")(doc) and state_of("storage", "degraded")(doc)
        ),
    )

    payloads = {n: f"doc {n}".encode() for n in range(20)}
    produce_inbound(settings, [upload_message(n, data) for n, data in payloads.items()])
    replies = replies_to(settings, 20)
    assert all("storage" in r.degraded for r in replies)
    assert all("Upload queued" not in r.notices for r in replies)
    assert len(files_under(local_root)) == 20

    s3.start()
    wait_for(lambda: len(objects(s3, settings.s3_bucket)) == 20, 120, "uploads in S3")
    wait_for(lambda: not files_under(local_root), 60, "temporary copies deleted")
    assert metric(worker, 'upload_tasks_total{outcome="promoted"}') == 20


def test_path_traversal_is_dead_lettered_and_oversized_uploads_are_refused_with_a_reason(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
) -> None:
    settings = multimodal_settings(stack, tmp_path, s3, upload_max_bytes=1000)
    workers.start(settings)
    good = upload_message(1, b"x" * 10)
    big = upload_message(2, b"y" * 5000)
    document = json.loads(encode_message(upload_message(3, b"z")))
    document["attachments"][0]["storage_key"] = "../../etc/passwd"
    produce_raw(
        settings,
        settings.topic("conversation.inbound"),
        [(b"tenant-a:evil", json.dumps(document).encode())],
    )
    produce_inbound(settings, [good, big])

    replies = {r.in_reply_to: r for r in replies_to(settings, 2)}
    [dead] = consume(settings, settings.topic("conversation.inbound.dlq"), 1)

    assert "path traversal" in dead.headers[ERRORS_MESSAGE]
    assert replies[good.message_id].notices == ()
    [refusal] = replies[big.message_id].notices
    assert refusal == "Attachment file-2 refused: 5000 bytes is more than the 1000-byte limit"
    stored = objects(s3, settings.s3_bucket)
    assert set(stored) == {"tenant-a/uploads/file-1.bin"}
    assert not (tmp_path / "etc").exists()


def test_a_queued_upload_of_several_megabytes_reaches_the_primary_with_every_byte(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
) -> None:
    # The origin code stored queued uploads of 1 MB or more without their data.
    settings = multimodal_settings(
        stack,
        tmp_path,
        s3,
        storage_chain="s3,local",
        storage_local_root=str(unusable_dir(tmp_path, "storage")),
    )
    s3.stop()
    worker = workers.start(settings)
    data = bytes(range(256)) * (6 * 1024 + 7)  # about 1.5 MiB, not a multiple of anything
    message = upload_message(7, data)
    produce_inbound(settings, [message])
    [reply] = replies_to(settings, 1)
    assert "Upload queued" in reply.notices

    s3.start()
    wait_for(lambda: len(objects(s3, settings.s3_bucket)) == 1, 120, "the upload in S3")
    assert objects(s3, settings.s3_bucket)["tenant-a/uploads/file-7.bin"] == data
    assert metric(worker, 'upload_tasks_total{outcome="stored"}') == 1


def test_an_upload_still_unstored_after_its_attempts_goes_to_the_dead_letter_topic_whole(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
) -> None:
    settings = multimodal_settings(
        stack,
        tmp_path,
        s3,
        storage_chain="s3,local",
        storage_local_root=str(unusable_dir(tmp_path, "storage")),
        upload_max_attempts=3,
    )
    s3.stop()
    worker = workers.start(settings)
    data = b"keep me" * 100
    produce_inbound(settings, [upload_message(1, data)])
    [reply] = replies_to(settings, 1)
    assert "Upload queued" in reply.notices

    [dead] = consume(settings, settings.topic("upload.retry.dlq"), 1, timeout=60)
    task = decode_message(UploadTask, dead.value)
    assert base64.b64decode(task.content_base64 or "") == data
    assert dead.headers["dlq.attempts"] == "3"
    assert "storage.s3" in dead.headers[ERRORS_MESSAGE]
    wait_for(
        lambda: metric(worker, 'upload_tasks_total{outcome="dead_lettered"}') == 1, 10, "metric"
    )


# --------------------------------------------------------------------------- backups


def test_backup_tasks_copy_stored_objects_and_retry_until_the_backup_store_takes_them(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
) -> None:
    backup_root = unusable_dir(tmp_path, "backup")
    settings = multimodal_settings(stack, tmp_path, s3, backup_local_root=str(backup_root))
    worker = workers.start(settings)
    produce_inbound(settings, [upload_message(n, f"keep {n}".encode()) for n in range(3)])
    replies_to(settings, 3)

    task = BackupTask(
        task_id="nightly",
        tenant_id="tenant-a",
        storage_keys=(
            "uploads/file-0.bin",
            "uploads/file-1.bin",
            "uploads/file-2.bin",
            "uploads/never-stored.bin",
        ),
    )
    produce_raw(settings, settings.topic("backup.tasks"), [(b"nightly", encode_message(task))])
    # The backup store is down: the task fails, waits and tries again.
    wait_for(lambda: metric(worker, "backup_task_attempts_total") >= 2, 60, "backup retries")
    assert not backup_root.exists()

    backup_root.parent.unlink()
    wait_for(lambda: len(files_under(backup_root)) == 3, 60, "objects backed up")
    assert (backup_root / "tenant-a/uploads/file-1.bin").read_bytes() == b"keep 1"
    wait_for(
        lambda: metric(worker, 'backup_objects_total{outcome="missing"}') == 1, 10, "missing count"
    )
    assert consume(settings, settings.topic("backup.tasks.dlq"), 1, timeout=2, settle=0) == []
