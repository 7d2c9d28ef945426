"""Files given to the ``produce`` command, as inline attachments of a message."""

from __future__ import annotations

import base64
import mimetypes
import re
from pathlib import Path

from sa01.core.errors import UploadRefusedError
from sa01.core.settings import Settings
from schemas.messages import Attachment, storage_key_problem, tenant_upload_key

__all__ = ["inline_attachment", "read_upload"]


def read_upload(settings: Settings, path: str) -> bytes:
    """The bytes of ``path``; :class:`UploadRefusedError` when over the inline limit."""
    file = Path(path)
    size = file.stat().st_size
    if size > settings.upload_max_bytes:
        raise UploadRefusedError(
            f"{path} is {size} bytes; a message carries at most {settings.upload_max_bytes}"
            " (SA01_UPLOAD_MAX_BYTES)"
        )
    return file.read_bytes()


def _attachment_id(name: str) -> str:
    """``name`` made a valid client id (letters, digits, ``._-``; starts alphanumeric)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-")[:128]
    return cleaned or "attachment"


def inline_attachment(tenant: str, message_id: str, path: str, data: bytes) -> Attachment:
    """``data`` as an attachment named ``<message id>/<file name>``: the worker stores it
    under ``<tenant>/uploads/<message id>/<file name>``."""
    name = Path(path).name
    key = f"{message_id}/{name}"
    problem = storage_key_problem(tenant_upload_key(tenant, key))
    if problem is not None:
        raise UploadRefusedError(f"cannot upload {path}: the storage key {key!r} {problem}")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Attachment(
        attachment_id=_attachment_id(name),
        content_type=content_type,
        size_bytes=len(data),
        storage_key=key,
        content_base64=base64.b64encode(data).decode(),
    )
