"""Export the JSON Schema of every message model into ``schemas/json``.

Run ``python -m schemas.export`` after changing a model; a test fails while the
exported files are stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.messages import (
    BackupTask,
    ConversationInbound,
    ConversationReply,
    DegradationEvent,
    MemoryRecord,
    UploadTask,
)

__all__ = ["EXPORTED_MODELS", "SCHEMA_DIR", "render_schema", "write_schemas"]

SCHEMA_DIR = Path(__file__).parent / "json"
EXPORTED_MODELS: tuple[type[BaseModel], ...] = (
    BackupTask,
    ConversationInbound,
    ConversationReply,
    DegradationEvent,
    MemoryRecord,
    UploadTask,
)


def render_schema(model: type[BaseModel]) -> str:
    """The JSON Schema of ``model`` as the exact text stored in the repository."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:sa01:schema:{model.__name__}:v1"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write one ``<Model>.schema.json`` per exported model; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in EXPORTED_MODELS:
        path = directory / f"{model.__name__}.schema.json"
        path.write_text(render_schema(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_schemas():
        print(written_path)
