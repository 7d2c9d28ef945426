"""Storage keys and the local file store: nothing escapes the root; inline uploads are checked."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from sa01.core.errors import ObjectNotFoundError, ServiceUnavailableError, UploadRefusedError
from sa01.core.settings import Settings
from sa01.pipeline.upload_tasks import backoff_seconds
from sa01.providers.storage import LocalFileStore, build_store
from schemas.messages import Attachment, UploadTask, storage_key_problem


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("../etc/passwd", "path traversal"),
        ("a/../../b", "path traversal"),
        ("a/./b", "path traversal"),
        ("/etc/passwd", "starts with '/'"),
        ("a//b", "empty"),
        ("a\\..\\b", "backslash"),
        ("a\x00b", "control character"),
        ("x" * 1025, "at most 1024"),
        ("", "empty"),
    ],
)
def test_keys_that_could_escape_a_root_are_refused_with_the_reason(key: str, problem: str) -> None:
    reason = storage_key_problem(key)
    assert reason is not None and problem in reason


@pytest.mark.parametrize("key", ["a", "tenant/uploads/file-1.bin", "a/b.c/..d/d..", "ü/日本.txt"])
def test_ordinary_keys_are_accepted(key: str) -> None:
    assert storage_key_problem(key) is None


def test_an_attachment_with_a_traversal_key_fails_validation_clearly() -> None:
    with pytest.raises(ValidationError, match="path traversal"):
        Attachment(attachment_id="a", content_type="text/plain", size_bytes=0, storage_key="../x")


def test_inline_content_must_match_its_declared_size_and_be_base64() -> None:
    with pytest.raises(ValidationError, match="holds 3 bytes but size_bytes says 4"):
        Attachment(
            attachment_id="a",
            content_type="text/plain",
            size_bytes=4,
            storage_key="k",
            content_base64=base64.b64encode(b"abc").decode(),
        )
    with pytest.raises(ValidationError, match="not base64"):
        Attachment(
            attachment_id="a",
            content_type="text/plain",
            size_bytes=4,
            storage_key="k",
            content_base64="!!!!",
        )


def test_an_upload_task_needs_its_bytes_or_the_store_holding_them() -> None:
    with pytest.raises(ValidationError, match="content_base64 or held_in"):
        UploadTask(
            upload_id="u",
            tenant_id="t",
            message_id="m",
            storage_key="k",
            content_type="text/plain",
            size_bytes=1,
        )


async def test_the_local_store_round_trips_and_reports_missing_objects(tmp_path: Path) -> None:
    store = LocalFileStore(name="local", root=tmp_path / "root")
    await store.check()
    await store.put("t/a.bin", b"data", "application/octet-stream")
    assert await store.get("t/a.bin") == b"data"
    assert await store.exists("t/a.bin")
    await store.delete("t/a.bin")
    await store.delete("t/a.bin")  # absent is fine
    with pytest.raises(ObjectNotFoundError):
        await store.get("t/a.bin")
    # No temporary file is left behind by the atomic write.
    assert [p.name for p in (tmp_path / "root" / "t").iterdir()] == []


async def test_the_local_store_refuses_a_symlink_that_leads_outside_its_root(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    store = LocalFileStore(name="local", root=root)
    with pytest.raises(UploadRefusedError, match="escapes the store's root"):
        await store.put("link/stolen.txt", b"x", "text/plain")
    assert list(outside.iterdir()) == []
    with pytest.raises(UploadRefusedError, match="path traversal"):
        await store.get("../outside/anything")


async def test_a_local_root_that_cannot_exist_is_an_outage_not_a_refusal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = LocalFileStore(name="local", root=blocker / "root")
    with pytest.raises(ServiceUnavailableError, match=r"storage\.local"):
        await store.check()
    with pytest.raises(ServiceUnavailableError):
        await store.put("a", b"x", "text/plain")


def test_an_unknown_store_name_is_a_clear_configuration_error() -> None:
    from sa01.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown store 'ftp'"):
        build_store(Settings(), "ftp")


def test_upload_backoff_grows_and_is_capped() -> None:
    settings = Settings(upload_retry_backoff_seconds=1.0, upload_retry_max_backoff_seconds=8.0)
    delays = [backoff_seconds(settings, n) for n in range(1, 8)]
    assert 0.8 <= delays[0] <= 1.2
    assert 3.2 <= delays[2] <= 4.8
    assert all(d <= 8.0 * 1.2 for d in delays)
