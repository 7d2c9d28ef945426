"""``produce --attach/--voice`` and ``backup``: operators' way into scenarios 3 and 4."""

from __future__ import annotations

from pathlib import Path

import pytest

from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import BackupTask, ConversationInbound
from tests.support.commands import command
from tests.support.kafka import consume

pytestmark = pytest.mark.integration


def test_produce_sends_files_inline_and_a_voice_message(stack: Settings, tmp_path: Path) -> None:
    document = tmp_path / "notes.txt"
    document.write_text("meeting notes")
    recording = tmp_path / "question.mp3"
    recording.write_bytes(b"ID3 not really audio")

    sent = command(stack, "produce", "--attach", str(document), "--text", "see attached")
    spoken = command(stack, "produce", "--voice", str(recording))

    assert sent.returncode == 0, sent.stderr
    assert spoken.returncode == 0, spoken.stderr
    records = consume(stack, stack.topic("conversation.inbound"), 2)
    messages = {
        m.message_id: m for m in (decode_message(ConversationInbound, r.value) for r in records)
    }
    upload = messages[sent.stdout.split()[0]]
    voice = messages[spoken.stdout.split()[0]]
    [attachment] = upload.attachments
    assert attachment.content() == b"meeting notes"
    assert attachment.content_type == "text/plain"
    assert attachment.storage_key == f"{upload.message_id}/notes.txt"  # in tenant-1/uploads/
    assert voice.voice is True and voice.text == ""
    assert voice.attachments[0].content_type == "audio/mpeg"


def test_produce_refuses_a_file_over_the_inline_limit_and_says_which(
    stack: Settings, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2000)
    result = command(
        stack.model_copy(update={"upload_max_bytes": 1000}), "produce", "--attach", str(big)
    )
    assert result.returncode == 1
    assert (
        f"{big} is 2000 bytes; a message carries at most 1000 (SA01_UPLOAD_MAX_BYTES)"
        in result.stderr
    )


def test_backup_queues_a_task_and_refuses_keys_that_escape(stack: Settings) -> None:
    queued = command(
        stack, "backup", "--tenant", "t", "uploads/a.bin", "uploads/b.bin", "--task-id", "nightly-1"
    )
    refused = command(stack, "backup", "--tenant", "t", "../../etc/shadow")
    foreign = command(stack, "backup", "--tenant", "t:x", "uploads/a.bin")

    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.strip() == "nightly-1"
    [record] = consume(stack, stack.topic("backup.tasks"), 1)
    task = decode_message(BackupTask, record.value)
    assert task.storage_keys == ("uploads/a.bin", "uploads/b.bin")
    assert task.tenant_id == "t"
    assert record.key == b"t:nightly-1", "the tenant leads the key"
    assert refused.returncode == 1
    assert "path traversal" in refused.stderr
    assert foreign.returncode == 1
    assert "tenant_id" in foreign.stderr
