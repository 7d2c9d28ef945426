"""Encoding and decoding of message models, and the Faust codec built on them.

Decoding errors are translated into the project's own classes so that routing to a
dead-letter topic is decided by class: :class:`MessageDecodeError` for bytes that are
not UTF-8 JSON, :class:`MessageValidationError` for JSON that fails the schema.
A valid message is parsed once (``model_validate_json``); only bad input is parsed again
to tell the two apart.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from faust.serializers.codecs import Codec
from pydantic import BaseModel, ValidationError

from sa01.core.errors import MessageDecodeError, MessageValidationError

__all__ = ["CONTENT_TYPE", "ModelCodec", "decode_message", "encode_message"]

CONTENT_TYPE = "application/json"
#: Schema problems named in a validation error (the rest are counted).
MAX_REPORTED_PROBLEMS = 10
M = TypeVar("M", bound=BaseModel)


def encode_message(message: BaseModel) -> bytes:
    """UTF-8 JSON of a message, as written to Kafka."""
    return message.model_dump_json().encode()


def decode_message(model: type[M], data: bytes | None) -> M:
    """Parse and validate ``data`` as ``model``; raise a project error on bad input."""
    if data is None:
        raise MessageDecodeError("message has no value (tombstone)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageDecodeError(f"value is not UTF-8: {exc}") from exc
    try:
        return model.model_validate_json(text)  # the usual case: one parse
    except (ValidationError, ValueError, RecursionError):
        pass  # bad input: parse again below, to say exactly what is wrong
    return _refuse(model, text)


def _refuse(model: type[M], text: str) -> M:
    """Raise the project error that says why ``text`` is not a valid ``model``."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageDecodeError(f"value is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise MessageDecodeError("value is JSON nested too deeply to read") from exc
    except ValueError as exc:  # e.g. an integer literal past Python's digit limit
        raise MessageDecodeError(f"value is not JSON this consumer can read: {exc}") from exc
    if not isinstance(document, dict):
        raise MessageValidationError(
            f"{model.__name__} must be a JSON object, got {type(document).__name__}"
        )
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False)[:MAX_REPORTED_PROBLEMS]
        )
        more = exc.error_count() - MAX_REPORTED_PROBLEMS
        if more > 0:
            problems += f"; and {more} more"
        raise MessageValidationError(f"invalid {model.__name__}: {problems}") from exc
    except RecursionError as exc:
        raise MessageValidationError(f"invalid {model.__name__}: nested too deeply") from exc


class ModelCodec(Codec):
    """A Faust codec for one pydantic model (``value_serializer=ModelCodec(Model)``)."""

    def __init__(self, model: type[BaseModel], **kwargs: Any) -> None:  # faust's Codec options
        self.model = model
        super().__init__(model=model, **kwargs)

    def _dumps(self, obj: object) -> bytes:
        if isinstance(obj, BaseModel):
            return encode_message(obj)
        return self.model.model_validate(obj, strict=False).model_dump_json().encode()

    def _loads(self, s: bytes) -> BaseModel:
        return decode_message(self.model, s)
