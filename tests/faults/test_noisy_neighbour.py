"""A noisy, hostile tenant cannot stop, cross into or slow down another tenant (issue 12).

Tenant A sends, all at once: 500 messages on one session, 50 prompts over the model's
context window, 20 voice messages with junk audio, 20 uploads with oversized keys and
20 messages naming tenant B's objects. Meanwhile tenant B sends 200 messages over 20
sessions. Every B message is answered once and in order per session, no circuit opens,
none of B's objects is read or changed, and each of A's messages gets its own notice or
dead letter. B's reply latency is printed beside a run without A (printed, not
asserted: this machine is shared).
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loopback import LLMServer
from loopback.audio_server import AudioServer
from loopback.s3_server import S3Server
from sa01.core.settings import Settings
from sa01.journeys.conversation import ConversationJourney
from sa01.journeys.voice import UNREADABLE_AUDIO
from schemas.codec import decode_message, encode_message
from schemas.messages import Attachment, ConversationInbound, ConversationReply
from tests.integration.test_multimodal import multimodal_settings, objects
from tests.integration.test_worker_end_to_end import with_llm
from tests.support.kafka import Record, consume, produce_raw
from tests.support.worker import WorkerFactory, WorkerProcess

pytestmark = pytest.mark.faults

CONTEXT_WINDOW = 2000
B_SECRET = "B-SECRET-CONTENT"


@pytest.fixture
def small_model() -> Iterator[LLMServer]:
    """An OpenAI-compatible model with a 2,000-token context window."""
    server = LLMServer(name="small", context_window_tokens=CONTEXT_WINDOW)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def message(
    tenant: str,
    session: str,
    text: str,
    *,
    voice: bool = False,
    attachments: tuple[Attachment, ...] = (),
) -> ConversationInbound:
    return ConversationInbound(
        message_id=str(uuid.uuid4()),
        tenant_id=tenant,
        session_id=session,
        agent_id="agent-1",
        text=text,
        created_at=datetime.now(UTC),
        voice=voice,
        attachments=attachments,
    )


def inline(attachment_id: str, key: str, data: bytes, content_type: str) -> Attachment:
    return Attachment(
        attachment_id=attachment_id,
        content_type=content_type,
        size_bytes=len(data),
        storage_key=key,
        content_base64=base64.b64encode(data).decode(),
    )


def record_of(inbound: ConversationInbound) -> tuple[bytes, bytes]:
    return inbound.partition_key.encode(), encode_message(inbound)


def replies_in(records: list[Record]) -> list[tuple[ConversationReply, Record]]:
    return [(decode_message(ConversationReply, r.value), r) for r in records]


def latencies(
    sent: list[ConversationInbound], replies: dict[str, tuple[ConversationReply, Record]]
) -> list[float]:
    return [(replies[m.message_id][1].timestamp - m.created_at.timestamp()) * 1000 for m in sent]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def breaker_metrics(worker: WorkerProcess) -> tuple[dict[str, float], list[str]]:
    """``circuit_breaker_state`` per breaker, and every transition into ``open``."""
    states: dict[str, float] = {}
    opened: list[str] = []
    for line in worker.get("/metrics").text.splitlines():
        if line.startswith("circuit_breaker_state{"):
            name = line.split('name="', 1)[1].split('"', 1)[0]
            states[name] = float(line.rsplit(" ", 1)[1])
        if (
            line.startswith("circuit_breaker_transitions_total{")
            and 'to_state="open"' in line
            and float(line.rsplit(" ", 1)[1]) > 0
        ):
            opened.append(line)
    return states, opened


def b_traffic(round_name: str) -> list[ConversationInbound]:
    return [
        message("tenant-b", f"b-{n % 20}", f"{round_name} question {n} from B") for n in range(200)
    ]


def check_b_answered_in_order(
    sent: list[ConversationInbound], outbound: list[tuple[ConversationReply, Record]]
) -> dict[str, tuple[ConversationReply, Record]]:
    ids = {m.message_id for m in sent}
    mine = [(reply, rec) for reply, rec in outbound if reply.in_reply_to in ids]
    counts: dict[str, int] = defaultdict(int)
    for reply, _ in mine:
        counts[reply.in_reply_to] += 1
    assert set(counts) == ids, f"{len(ids - set(counts))} of B's messages got no reply"
    assert max(counts.values()) == 1, "a B message was answered twice"
    by_session: dict[str, list[str]] = defaultdict(list)
    for reply, _ in sorted(mine, key=lambda item: (item[1].partition, item[1].offset)):
        by_session[reply.session_id].append(reply.in_reply_to)
    for session, answered in by_session.items():
        expected = [m.message_id for m in sent if m.session_id == session]
        assert answered == expected, f"session {session} answered out of order"
    return {reply.in_reply_to: (reply, rec) for reply, rec in mine}


def test_a_noisy_hostile_tenant_cannot_stop_cross_into_or_slow_another(
    stack: Settings,
    workers: WorkerFactory,
    tmp_path: Path,
    s3: S3Server,
    openai_audio: AudioServer,
    small_model: LLMServer,
) -> None:
    settings = with_llm(
        multimodal_settings(
            stack,
            tmp_path,
            s3,
            openai_audio=openai_audio,
            stt_chain="openai,native",
            tts_chain="native",
            health_probes="postgres",
            memory_enabled=False,
        ),
        small_model,
        llm_breaker_consecutive_failures=2,
    )
    worker = workers.start(settings)
    topic = settings.topic("conversation.inbound")
    outbound_topic = settings.topic("conversation.outbound")

    # B's own files, stored before A arrives.
    b_files = [
        message(
            "tenant-b",
            "b-files",
            f"my file {n}",
            attachments=(
                inline(f"secret-{n}", f"secret-{n}.bin", B_SECRET.encode(), "text/plain"),
            ),
        )
        for n in range(2)
    ]
    produce_raw(settings, topic, [record_of(m) for m in b_files])
    assert len(consume(settings, outbound_topic, 2)) == 2
    b_objects = {
        k: v for k, v in objects(s3, settings.s3_bucket).items() if k.startswith("tenant-b/")
    }
    assert set(b_objects) == {"tenant-b/uploads/secret-0.bin", "tenant-b/uploads/secret-1.bin"}

    # The baseline: B alone.
    quiet = b_traffic("quiet")
    produce_raw(settings, topic, [record_of(m) for m in quiet])
    seen = replies_in(consume(settings, outbound_topic, 2 + 200, timeout=240))
    quiet_replies = check_b_answered_in_order(quiet, seen)

    # A and B at the same time.
    hot = [message("tenant-a", "hot", f"flood {n}") for n in range(500)]
    too_long = [message("tenant-a", f"long-{n % 5}", "word " * 3000) for n in range(50)]
    junk_voice = [
        message(
            "tenant-a",
            f"voice-{n % 5}",
            "",
            voice=True,
            attachments=(
                inline("rec", f"voice-in/junk-{n}.mp3", b"junk" + os.urandom(256), "audio/mpeg"),
            ),
        )
        for n in range(20)
    ]
    # 1,011 bytes: a valid key for the client, over S3's 1,024 once under the tenant's prefix.
    long_key = "/".join(["k" * 200] * 5) + "/extra"
    oversized_keys: list[tuple[bytes, bytes]] = []
    refused_uploads = []
    for n in range(10):
        upload = message(
            "tenant-a",
            "keys",
            f"upload {n}",
            attachments=(inline("f", f"{long_key}{n}", b"data", "text/plain"),),
        )
        refused_uploads.append(upload)
        oversized_keys.append(record_of(upload))
    dead_uploads = []
    for n in range(10):
        document = json.loads(encode_message(message("tenant-a", "keys", f"segment {n}")))
        document["attachments"] = [
            {
                "attachment_id": "f",
                "content_type": "text/plain",
                "size_bytes": 4,
                "storage_key": "s" * 300,  # a path segment over 255 bytes
                "content_base64": base64.b64encode(b"data").decode(),
            }
        ]
        dead_uploads.append(document["message_id"])
        oversized_keys.append((b"tenant-a:keys", json.dumps(document).encode()))
    naming_b = [
        message(
            "tenant-a",
            "thief",
            "",
            voice=True,
            attachments=(
                Attachment(
                    attachment_id="rec",
                    content_type="audio/mpeg",
                    size_bytes=len(B_SECRET),
                    storage_key=f"tenant-b/uploads/secret-{n % 2}.bin",
                ),
            ),
        )
        for n in range(10)
    ] + [
        message(
            "tenant-a",
            "vandal",
            f"overwrite {n}",
            attachments=(
                inline("f", f"tenant-b/uploads/secret-{n % 2}.bin", b"A-OVERWRITE", "text/plain"),
            ),
        )
        for n in range(10)
    ]
    noisy = b_traffic("noisy")
    records = [record_of(m) for m in hot]
    records += [record_of(m) for m in too_long + junk_voice + naming_b]
    records += oversized_keys
    records += [record_of(m) for m in noisy]
    produce_raw(settings, topic, records)

    a_replied = 500 + 50 + 20 + 20 + 10
    total = 2 + 200 + a_replied + 200
    seen = replies_in(consume(settings, outbound_topic, total, timeout=290, settle=3.0))
    noisy_replies = check_b_answered_in_order(noisy, seen)

    # No circuit opened: A's mistakes are A's.
    states, opened = breaker_metrics(worker)
    assert opened == []
    assert states and all(value == 0 for value in states.values()), states

    # Each of A's messages got its own answer (or, for a malformed one, a dead letter).
    by_message = {reply.in_reply_to: reply for reply, _ in seen}
    assert all(by_message[m.message_id].notices == () for m in hot)
    for m in too_long:
        assert by_message[m.message_id].notices == (ConversationJourney.TOO_LONG_NOTICE,)
    for m in junk_voice:
        assert UNREADABLE_AUDIO in by_message[m.message_id].notices
        assert by_message[m.message_id].degraded == ()
    for m in refused_uploads:
        [notice] = by_message[m.message_id].notices
        assert "refused" in notice and "bytes" in notice
    dead = consume(settings, settings.topic("conversation.inbound.dlq"), 10, timeout=60)
    assert sorted(json.loads(r.value or b"{}")["message_id"] for r in dead) == sorted(dead_uploads)
    assert all("storage_key" in r.headers["__streams.errors.message"] for r in dead)

    # B's objects were neither read nor changed.
    after = objects(s3, settings.s3_bucket)
    assert {k: v for k, v in after.items() if k.startswith("tenant-b/")} == b_objects
    assert after["tenant-a/uploads/tenant-b/uploads/secret-1.bin"] == b"A-OVERWRITE"
    for m in naming_b[:10]:
        reply = by_message[m.message_id]
        assert B_SECRET not in reply.text
        assert UNREADABLE_AUDIO in reply.notices
    assert not any(B_SECRET in json.dumps(r.body) for r in small_model.requests)

    quiet_ms = latencies(quiet, quiet_replies)
    noisy_ms = latencies(noisy, noisy_replies)
    print(
        "\ntenant B reply latency, ms   p50      p99\n"
        f"  alone                     {statistics.median(quiet_ms):7.0f}  "
        f"{percentile(quiet_ms, 0.99):7.0f}\n"
        f"  beside noisy tenant A     {statistics.median(noisy_ms):7.0f}  "
        f"{percentile(noisy_ms, 0.99):7.0f}"
    )
