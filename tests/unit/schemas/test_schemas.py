"""Unit tests of the message models, their codec and the exported JSON Schemas."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sa01.core.errors import MessageDecodeError, MessageValidationError
from schemas.codec import ModelCodec, decode_message, encode_message
from schemas.export import EXPORTED_MODELS, SCHEMA_DIR, render_schema
from schemas.messages import (
    CLIENT_ID_PATTERN,
    MAX_ATTACHMENTS,
    MAX_OBSERVED_AHEAD,
    SCHEMA_VERSION,
    Attachment,
    BackupTask,
    CircuitState,
    ConversationInbound,
    ConversationReply,
    DegradationEvent,
    MemoryRecord,
    ServiceState,
    UploadTask,
    UseCase,
    reply_id_for,
    scoped_key,
    storable_text,
    storage_key_problem,
)

CREATED_AT = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


def inbound_fields(**overrides: Any) -> dict[str, Any]:
    """Python-mode fields of a valid ConversationInbound."""
    fields: dict[str, Any] = {
        "message_id": "m-1",
        "tenant_id": "tenant-a",
        "session_id": "session-1",
        "agent_id": "agent-x",
        "text": "hello",
        "created_at": CREATED_AT,
    }
    fields.update(overrides)
    return fields


def inbound_document(**overrides: Any) -> dict[str, Any]:
    """JSON-mode document of a valid ConversationInbound."""
    document: dict[str, Any] = {
        "message_id": "m-1",
        "tenant_id": "tenant-a",
        "session_id": "session-1",
        "agent_id": "agent-x",
        "text": "hello",
        "created_at": "2024-05-17T12:30:45.123456Z",
    }
    document.update(overrides)
    return document


def reply_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "message_id": "r-1",
        "in_reply_to": "m-1",
        "tenant_id": "tenant-a",
        "session_id": "session-1",
        "text": "hi there",
        "model": "echo",
    }
    fields.update(overrides)
    return fields


def as_bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


# --- ConversationInbound -----------------------------------------------------------


def test_inbound_valid_fields_are_kept() -> None:
    inbound = ConversationInbound(**inbound_fields())
    assert inbound.message_id == "m-1"
    assert inbound.tenant_id == "tenant-a"
    assert inbound.session_id == "session-1"
    assert inbound.agent_id == "agent-x"
    assert inbound.text == "hello"
    assert inbound.created_at == CREATED_AT
    assert inbound.schema_version == SCHEMA_VERSION == 1
    assert inbound.voice is False
    assert inbound.attachments == ()


@pytest.mark.parametrize(
    "missing", ["message_id", "tenant_id", "session_id", "agent_id", "text", "created_at"]
)
def test_inbound_required_field_missing_is_refused(missing: str) -> None:
    fields = inbound_fields()
    del fields[missing]
    with pytest.raises(ValidationError) as info:
        ConversationInbound(**fields)
    assert [err["loc"] for err in info.value.errors()] == [(missing,)]
    assert info.value.errors()[0]["type"] == "missing"


@pytest.mark.parametrize("field", ["message_id", "tenant_id", "session_id", "agent_id", "text"])
def test_inbound_int_where_string_expected_is_refused(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ConversationInbound(**inbound_fields(**{field: 42}))
    assert info.value.errors()[0]["loc"] == (field,)
    assert info.value.errors()[0]["type"] == "string_type"


@pytest.mark.parametrize("field", ["message_id", "tenant_id", "session_id", "agent_id", "text"])
def test_inbound_int_where_string_expected_is_refused_in_json(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ConversationInbound.model_validate_json(as_bytes(inbound_document(**{field: 42})))
    assert info.value.errors()[0]["loc"] == (field,)


def test_inbound_int_for_bool_is_refused() -> None:
    with pytest.raises(ValidationError):
        ConversationInbound.model_validate_json(as_bytes(inbound_document(voice=1)))


def test_inbound_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        ConversationInbound(**inbound_fields(priority="high"))
    assert info.value.errors()[0]["loc"] == ("priority",)
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_inbound_unknown_field_is_refused_in_json() -> None:
    with pytest.raises(ValidationError):
        ConversationInbound.model_validate_json(as_bytes(inbound_document(priority="high")))


@pytest.mark.parametrize("version", [0, 2, "1", 1.5])
def test_inbound_wrong_schema_version_is_refused(version: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ConversationInbound.model_validate_json(as_bytes(inbound_document(schema_version=version)))
    assert info.value.errors()[0]["loc"] == ("schema_version",)


def test_inbound_boolean_schema_version_is_refused() -> None:
    # The exported JSON Schema says {"const": 1, "type": "integer"}: `true` is not an
    # integer in JSON, and the models are documented as strict (no coercion).
    with pytest.raises(ValidationError):
        ConversationInbound.model_validate_json(as_bytes(inbound_document(schema_version=True)))


def test_inbound_explicit_schema_version_one_is_accepted() -> None:
    inbound = ConversationInbound.model_validate_json(as_bytes(inbound_document(schema_version=1)))
    assert inbound.schema_version == 1


def test_inbound_use_case_defaults_to_chat() -> None:
    assert ConversationInbound(**inbound_fields()).use_case is UseCase.CHAT


@pytest.mark.parametrize("value", ["chat", "coding", "fast"])
def test_inbound_use_case_accepts_its_values_in_json(value: str) -> None:
    inbound = ConversationInbound.model_validate_json(as_bytes(inbound_document(use_case=value)))
    assert inbound.use_case is UseCase(value)


@pytest.mark.parametrize("value", ["CHAT", "poetry", "", 1])
def test_inbound_invalid_use_case_is_refused(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ConversationInbound.model_validate_json(as_bytes(inbound_document(use_case=value)))
    assert info.value.errors()[0]["loc"] == ("use_case",)


@pytest.mark.parametrize("field", ["message_id", "tenant_id", "session_id", "agent_id"])
def test_inbound_empty_identifier_is_refused(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ConversationInbound(**inbound_fields(**{field: ""}))
    assert info.value.errors()[0]["loc"] == (field,)
    assert info.value.errors()[0]["type"] == "string_too_short"


def test_inbound_identifier_longer_than_128_is_refused() -> None:
    ConversationInbound(**inbound_fields(message_id="m" * 128))
    with pytest.raises(ValidationError, match="message_id"):
        ConversationInbound(**inbound_fields(message_id="m" * 129))


@pytest.mark.parametrize("field", ["message_id", "tenant_id", "session_id", "agent_id"])
@pytest.mark.parametrize(
    "value",
    ["\n\r", "a\x00b", "t\u00e9nant", "a:b", "a/b", ".hidden", "..", "-x", " a", "a b", ""],
)
def test_client_ids_outside_the_documented_set_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ConversationInbound(**inbound_fields(**{field: value}))


def test_an_attachment_id_outside_the_set_is_refused() -> None:
    with pytest.raises(ValidationError, match="attachment_id"):
        Attachment(attachment_id="a\nb", content_type="text/plain", size_bytes=0, storage_key="x")


def test_a_message_carries_at_most_max_attachments() -> None:
    attachment = Attachment(
        attachment_id="a", content_type="text/plain", size_bytes=0, storage_key="x.txt"
    )
    ConversationInbound(**inbound_fields(attachments=(attachment,) * MAX_ATTACHMENTS))
    with pytest.raises(ValidationError, match="attachments"):
        ConversationInbound(**inbound_fields(attachments=(attachment,) * (MAX_ATTACHMENTS + 1)))


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("a/" + "\u00e9" * 200, "segment of 400 bytes"),
        ("x" * 1025, "1025 bytes"),
        ("a/" + "\u00e9" * 512, "bytes long"),
    ],
)
def test_storage_keys_are_measured_in_utf8_bytes(key: str, problem: str) -> None:
    found = storage_key_problem(key)
    assert found is not None
    assert problem in found


def test_keys_joined_from_client_ids_are_unambiguous() -> None:
    # ("acme", "x:y") and ("acme:x", "y") used to share one Redis history.
    with pytest.raises(ValidationError):
        ConversationInbound(**inbound_fields(tenant_id="acme", session_id="x:y"))
    with pytest.raises(ValidationError):
        ConversationInbound(**inbound_fields(tenant_id="acme:x", session_id="y"))
    assert scoped_key("t", "m") != scoped_key("t2", "m")


def test_an_upload_task_outside_its_tenant_prefix_is_refused() -> None:
    with pytest.raises(ValidationError, match="prefix"):
        UploadTask(
            upload_id="u",
            tenant_id="tenant-a",
            message_id="m",
            storage_key="tenant-b/uploads/x",
            content_type="text/plain",
            size_bytes=1,
            content_base64="eA==",
        )


def test_inbound_empty_text_is_accepted_but_over_long_text_refused() -> None:
    assert ConversationInbound(**inbound_fields(text="")).text == ""
    with pytest.raises(ValidationError):
        ConversationInbound(**inbound_fields(text="x" * 100_001))


def test_inbound_is_frozen() -> None:
    inbound = ConversationInbound(**inbound_fields())
    with pytest.raises(ValidationError):
        inbound.text = "changed"  # type: ignore[misc]


def test_inbound_attachment_is_validated() -> None:
    document = inbound_document(
        attachments=[
            {
                "attachment_id": "a1",
                "content_type": "image/png",
                "size_bytes": -1,
                "storage_key": "k",
            }
        ]
    )
    with pytest.raises(ValidationError) as info:
        ConversationInbound.model_validate_json(as_bytes(document))
    assert info.value.errors()[0]["loc"] == ("attachments", 0, "size_bytes")


def test_partition_key_is_tenant_colon_session() -> None:
    inbound = ConversationInbound(**inbound_fields(tenant_id="acme", session_id="s-42"))
    assert inbound.partition_key == "acme:s-42"


# --- ConversationReply and DegradationEvent ------------------------------------------


def test_reply_valid_and_defaults() -> None:
    before = datetime.now(UTC)
    reply = ConversationReply(**reply_fields())
    after = datetime.now(UTC)
    assert reply.in_reply_to == "m-1"
    assert reply.degraded == ()
    assert reply.notices == ()
    assert reply.schema_version == 1
    assert before <= reply.created_at <= after
    assert reply.created_at.tzinfo is not None


@pytest.mark.parametrize(
    "missing", ["message_id", "in_reply_to", "tenant_id", "session_id", "text", "model"]
)
def test_reply_required_field_missing_is_refused(missing: str) -> None:
    fields = reply_fields()
    del fields[missing]
    with pytest.raises(ValidationError) as info:
        ConversationReply(**fields)
    assert info.value.errors()[0]["loc"] == (missing,)


def test_reply_int_where_string_expected_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        ConversationReply(**reply_fields(text=7))
    assert info.value.errors()[0]["loc"] == ("text",)


def test_reply_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError):
        ConversationReply(**reply_fields(tokens=12))


def test_reply_wrong_schema_version_is_refused() -> None:
    with pytest.raises(ValidationError):
        ConversationReply(**reply_fields(schema_version=2))


def test_reply_empty_message_id_is_refused() -> None:
    with pytest.raises(ValidationError):
        ConversationReply(**reply_fields(message_id=""))


def test_degradation_event_valid_and_defaults() -> None:
    event = DegradationEvent(service="somabrain", state=ServiceState.DEGRADED)
    other = DegradationEvent(service="somabrain", state=ServiceState.DEGRADED)
    assert event.circuit is CircuitState.CLOSED
    assert event.previous_state is None
    assert event.reason == ""
    assert event.latency_ms is None
    assert event.observed_at.tzinfo is not None
    assert event.event_id and other.event_id and event.event_id != other.event_id


@pytest.mark.parametrize("missing", ["service", "state"])
def test_degradation_event_required_field_missing_is_refused(missing: str) -> None:
    fields: dict[str, Any] = {"service": "kafka", "state": ServiceState.HEALTHY}
    del fields[missing]
    with pytest.raises(ValidationError) as info:
        DegradationEvent(**fields)
    assert info.value.errors()[0]["loc"] == (missing,)


def test_degradation_event_strictness() -> None:
    with pytest.raises(ValidationError):
        DegradationEvent(service=1, state=ServiceState.HEALTHY)
    with pytest.raises(ValidationError):
        DegradationEvent(service="kafka", state=ServiceState.HEALTHY, colour="red")
    with pytest.raises(ValidationError):
        DegradationEvent(service="kafka", state=ServiceState.HEALTHY, schema_version=2)
    with pytest.raises(ValidationError):
        DegradationEvent(service="", state=ServiceState.HEALTHY)
    with pytest.raises(ValidationError):
        DegradationEvent(service="kafka", state=ServiceState.HEALTHY, latency_ms=-1.0)


def test_degradation_event_invalid_state_is_refused_in_json() -> None:
    with pytest.raises(ValidationError) as info:
        DegradationEvent.model_validate_json(b'{"service": "kafka", "state": "on_fire"}')
    assert info.value.errors()[0]["loc"] == ("state",)


# --- reply_id_for ---------------------------------------------------------------------


def test_reply_id_for_is_deterministic() -> None:
    assert reply_id_for("t", "m-1") == reply_id_for("t", "".join(["m", "-", "1"]))
    # A fixed value: the id must be the same in every process and every release,
    # or a redelivered message would get a new reply id.
    assert reply_id_for("t", "m-1") == str(
        uuid.uuid5(uuid.UUID("6f1c3f4e-4b1e-5d0a-9a57-2f3e8a1c9b10"), "t:m-1")
    )


def test_reply_id_for_is_a_valid_identifier() -> None:
    reply = ConversationReply(**reply_fields(message_id=reply_id_for("t", "m-1")))
    assert len(reply.message_id) == 36


def test_two_tenants_equal_message_ids_get_different_replies() -> None:
    assert reply_id_for("tenant-a", "m-1") != reply_id_for("tenant-b", "m-1")


@given(st.lists(st.text(min_size=1, max_size=50), min_size=2, max_size=20, unique=True))
@hypothesis_settings(database=None)
def test_reply_id_for_is_distinct_per_input(message_ids: list[str]) -> None:
    reply_ids = [reply_id_for("t", message_id) for message_id in message_ids]
    assert len(set(reply_ids)) == len(message_ids)
    assert not set(reply_ids) & set(message_ids)


# --- decode_message / encode_message --------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"\xff", b'{"text": "\xff\xfe"}', b"\x80abc"],
    ids=["lone-ff", "bad-byte-in-string", "continuation-byte"],
)
def test_decode_non_utf8_raises_decode_error(data: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        decode_message(ConversationInbound, data)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_decode_utf16_or_utf32_json_raises_decode_error(encoding: str) -> None:
    # Bytes that are not UTF-8 are a decode error, whatever the JSON inside.
    data = json.dumps(inbound_document()).encode(encoding)
    with pytest.raises(MessageDecodeError):
        decode_message(ConversationInbound, data)


@pytest.mark.parametrize("data", [b"", b"not json", b"{", b'{"a": }', b"{'a': 1}"])
def test_decode_non_json_raises_decode_error(data: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        decode_message(ConversationInbound, data)


def test_decode_tombstone_raises_decode_error() -> None:
    with pytest.raises(MessageDecodeError, match="tombstone"):
        decode_message(ConversationInbound, None)


def test_decode_errors_are_not_validation_errors() -> None:
    with pytest.raises(MessageDecodeError) as info:
        decode_message(ConversationInbound, b"nope")
    assert not isinstance(info.value, MessageValidationError)


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b"[]", "list"), (b'[{"message_id": "m"}]', "list"), (b'"text"', "str"), (b"3", "int")],
)
def test_decode_non_object_raises_validation_error(data: bytes, kind: str) -> None:
    with pytest.raises(MessageValidationError) as info:
        decode_message(ConversationInbound, data)
    assert not isinstance(info.value, MessageDecodeError)
    assert "ConversationInbound" in str(info.value)
    assert kind in str(info.value)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({k: v for k, v in inbound_document().items() if k != "tenant_id"}, "tenant_id"),
        (inbound_document(session_id=5), "session_id"),
        (inbound_document(use_case="poetry"), "use_case"),
        (inbound_document(surprise=True), "surprise"),
        (inbound_document(schema_version=9), "schema_version"),
        (inbound_document(created_at="yesterday"), "created_at"),
        (
            inbound_document(
                attachments=[
                    {
                        "attachment_id": "a",
                        "content_type": "t",
                        "size_bytes": "big",
                        "storage_key": "k",
                    }
                ]
            ),
            "attachments.0.size_bytes",
        ),
    ],
)
def test_decode_schema_failure_names_the_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(MessageValidationError) as info:
        decode_message(ConversationInbound, as_bytes(document))
    message = str(info.value)
    assert f"{field}:" in message
    assert message.startswith("invalid ConversationInbound")
    assert isinstance(info.value.__cause__, ValidationError)


def test_decode_valid_message() -> None:
    inbound = decode_message(ConversationInbound, as_bytes(inbound_document()))
    assert inbound == ConversationInbound(**inbound_fields())


def test_encode_is_utf8_json() -> None:
    inbound = ConversationInbound(**inbound_fields(text="héllo ✓"))
    data = encode_message(inbound)
    document = json.loads(data.decode("utf-8"))
    assert document["text"] == "héllo ✓"
    assert document["schema_version"] == 1
    assert document["use_case"] == "chat"


client_ids = st.from_regex(CLIENT_ID_PATTERN, fullmatch=True)
identifiers = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=255
)
storable = st.characters(codec="utf-8", exclude_characters="\x00")
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
#: A degradation event is never dated past this clock's skew (MAX_OBSERVED_AHEAD).
observed_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2026, 1, 1), timezones=st.just(UTC)
)
attachments = st.builds(
    Attachment,
    attachment_id=client_ids,
    content_type=st.text(storable, min_size=1, max_size=255),
    size_bytes=st.integers(min_value=0, max_value=2**53),
    storage_key=st.lists(
        st.text(
            st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="/\\"),
            min_size=1,
            max_size=40,
        ).filter(lambda s: s not in (".", "..")),
        min_size=1,
        max_size=5,
    ).map("/".join),
)
inbounds = st.builds(
    ConversationInbound,
    message_id=client_ids,
    tenant_id=client_ids,
    session_id=client_ids,
    agent_id=client_ids,
    text=st.text(storable, max_size=2000),
    use_case=st.sampled_from(UseCase),
    created_at=aware_datetimes,
    voice=st.booleans(),
    attachments=st.lists(attachments, max_size=3).map(tuple),
)
replies = st.builds(
    ConversationReply,
    message_id=identifiers,
    in_reply_to=client_ids,
    tenant_id=client_ids,
    session_id=client_ids,
    text=st.text(max_size=2000),
    model=st.text(max_size=255),
    degraded=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    notices=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    created_at=aware_datetimes,
)
events = st.builds(
    DegradationEvent,
    event_id=identifiers,
    service=identifiers,
    state=st.sampled_from(ServiceState),
    previous_state=st.none() | st.sampled_from(ServiceState),
    circuit=st.sampled_from(CircuitState),
    reason=st.text(storable, max_size=2000),
    latency_ms=st.none()
    | st.floats(min_value=0, allow_nan=False, allow_infinity=False, max_value=1e12),
    observed_at=observed_datetimes,
    source=st.text(storable, max_size=255),
)


@given(st.one_of(inbounds, replies, events))
@hypothesis_settings(database=None, max_examples=200)
def test_encode_decode_round_trip(message: BaseModel) -> None:
    decoded = decode_message(type(message), encode_message(message))
    assert decoded == message
    assert type(decoded) is type(message)


# --- exported JSON Schemas ------------------------------------------------------------


def test_every_model_is_exported() -> None:
    assert set(EXPORTED_MODELS) == {
        BackupTask,
        UploadTask,
        ConversationInbound,
        ConversationReply,
        DegradationEvent,
        MemoryRecord,
    }
    stored = {path.name for path in SCHEMA_DIR.glob("*.schema.json")}
    assert stored == {f"{model.__name__}.schema.json" for model in EXPORTED_MODELS}


@pytest.mark.parametrize("model", EXPORTED_MODELS, ids=lambda model: model.__name__)
def test_exported_schema_is_not_stale(model: type[BaseModel]) -> None:
    path = SCHEMA_DIR / f"{model.__name__}.schema.json"
    assert path.exists(), f"{path} is missing: run `python -m schemas.export`"
    stored = path.read_text()
    assert stored == render_schema(model), (
        f"{path} is stale (it differs from {model.__name__}); run `python -m schemas.export`"
    )


def test_rendered_schema_has_id_and_dialect() -> None:
    schema = json.loads(render_schema(ConversationInbound))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "urn:sa01:schema:ConversationInbound:v1"
    assert schema["additionalProperties"] is False
    assert "message_id" in schema["required"]


# --- ModelCodec -----------------------------------------------------------------------


def test_model_codec_round_trip() -> None:
    codec = ModelCodec(ConversationInbound)
    inbound = ConversationInbound(
        **inbound_fields(
            use_case=UseCase.CODING,
            voice=True,
            attachments=(
                Attachment(
                    attachment_id="a1", content_type="image/png", size_bytes=10, storage_key="k"
                ),
            ),
        )
    )
    data = codec.dumps(inbound)
    assert isinstance(data, bytes)
    assert data == encode_message(inbound)
    loaded = codec.loads(data)
    assert isinstance(loaded, ConversationInbound)
    assert loaded == inbound


def test_model_codec_dumps_python_dict() -> None:
    codec = ModelCodec(ConversationInbound)
    inbound = ConversationInbound(**inbound_fields())
    assert codec.loads(codec.dumps(inbound.model_dump())) == inbound


def test_model_codec_loads_raises_project_errors() -> None:
    codec = ModelCodec(ConversationInbound)
    with pytest.raises(MessageDecodeError):
        codec.loads(b"\xff")
    with pytest.raises(MessageValidationError):
        codec.loads(b"{}")


@pytest.mark.parametrize("text", ["a\x00b", "lone \ud800 surrogate"])
def test_text_no_store_can_hold_is_refused_with_the_field_named(text: str) -> None:
    # PostgreSQL's jsonb refuses \u0000 and unpaired surrogates: such a message used to
    # fail its transaction after the model had answered.
    with pytest.raises(ValidationError, match="text"):
        ConversationInbound(**inbound_fields(text=text))


def test_storable_text_cleans_what_no_store_can_hold() -> None:
    assert storable_text("a\x00b\ud800c") == "ab\ufffdc"


def test_a_degradation_event_dated_past_the_clock_skew_is_refused() -> None:
    # Dated far ahead, it would make the fold ignore every later event of its service.
    now = datetime.now(UTC)
    skewed = now + MAX_OBSERVED_AHEAD - timedelta(seconds=30)
    DegradationEvent(service="kafka", state=ServiceState.HEALTHY, observed_at=skewed)
    with pytest.raises(ValidationError) as info:
        DegradationEvent(
            service="kafka", state=ServiceState.UNAVAILABLE, observed_at=now + timedelta(days=1)
        )
    assert info.value.errors()[0]["loc"] == ("observed_at",)
