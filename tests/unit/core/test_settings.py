"""Unit tests of the Settings object (environment variables, secrets, derived values)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr, ValidationError

from sa01.core.settings import PROVIDER_KEY_VARIABLES, Settings

SECRET = "sk-test-do-not-print-0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees no SA01_* variable and no provider key from the outer environment."""
    for name in list(os.environ):
        if name.upper().startswith("SA01_") or name.upper() in PROVIDER_KEY_VARIABLES.values():
            monkeypatch.delenv(name, raising=False)


def host_of(address: str) -> str | None:
    """The host of a URL or of a ``host:port`` address."""
    if "://" not in address:
        address = f"//{address}"
    return urlsplit(address).hostname


def fnv1a_63(text: str) -> int:
    """Reference FNV-1a 64-bit hash masked to 63 bits (independent of core.settings)."""
    value = 14695981039346656037
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * 1099511628211) % 2**64
    return value % 2**63


def test_service_defaults_point_at_localhost() -> None:
    settings = Settings()
    assert host_of(settings.kafka_bootstrap_servers) == "127.0.0.1"
    assert host_of(settings.database_url) == "127.0.0.1"
    assert host_of(settings.redis_url) == "127.0.0.1"
    assert settings.somabrain_url is None, "not configured until set"
    assert host_of(settings.temporal_host) == "127.0.0.1"
    assert settings.web_host == "127.0.0.1"


def test_other_defaults() -> None:
    settings = Settings()
    assert settings.database_schema == "public"
    assert settings.topic_prefix == ""
    assert settings.responder == "litellm"
    assert settings.openai_api_key is None


@pytest.mark.parametrize(
    ("variable", "attribute", "value"),
    [
        ("SA01_KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers", "kafka-1:19092"),
        ("SA01_DATABASE_URL", "database_url", "postgresql://u:p@db.example:5433/x"),
        ("SA01_REDIS_URL", "redis_url", "redis://cache.example:6380/2"),
        ("SA01_SOMABRAIN_URL", "somabrain_url", "http://brain.example:9000"),
        ("SA01_TEMPORAL_HOST", "temporal_host", "temporal.example:7233"),
        ("SA01_DATABASE_SCHEMA", "database_schema", "tenant_test_1"),
        ("SA01_TOPIC_PREFIX", "topic_prefix", "t123-"),
        ("SA01_APP_ID", "app_id", "other-app"),
        ("SA01_RESPONDER", "responder", "echo"),
    ],
)
def test_sa01_variable_overrides_default(
    monkeypatch: pytest.MonkeyPatch, variable: str, attribute: str, value: str
) -> None:
    assert getattr(Settings(), attribute) != value
    monkeypatch.setenv(variable, value)
    assert getattr(Settings(), attribute) == value


def test_sa01_numeric_variables_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA01_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("SA01_MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("SA01_RELAY_ENABLED_IN_WORKER", "false")
    settings = Settings()
    assert settings.topic_partitions == 12
    assert settings.max_in_flight == 7
    assert settings.relay_enabled_in_worker is False


def test_unprefixed_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")
    assert Settings().kafka_bootstrap_servers == "127.0.0.1:9092"


def test_out_of_range_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA01_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_openai_api_key_is_read_as_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    settings = Settings()
    assert isinstance(settings.openai_api_key, SecretStr)
    assert settings.openai_api_key.get_secret_value() == SECRET


def test_openai_api_key_does_not_appear_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    settings = Settings()
    assert settings.openai_api_key is not None  # the key was read ...
    assert SECRET not in repr(settings)  # ... and is hidden
    assert SECRET not in str(settings)
    assert SECRET not in repr(settings.openai_api_key)
    assert SECRET not in str(settings.openai_api_key)
    assert SECRET not in settings.model_dump_json()


def test_prefixed_provider_key_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Provider keys keep the provider's usual variable name.
    monkeypatch.setenv("SA01_OPENAI_API_KEY", SECRET)
    assert Settings().openai_api_key is None


@pytest.mark.parametrize("schema", ["bad-schema;drop", "Public", "1abc", "", "a" * 64, "a b"])
def test_invalid_database_schema_is_refused(monkeypatch: pytest.MonkeyPatch, schema: str) -> None:
    monkeypatch.setenv("SA01_DATABASE_SCHEMA", schema)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert info.value.errors()[0]["loc"] == ("database_schema",)


def test_invalid_database_schema_is_refused_as_argument() -> None:
    with pytest.raises(ValidationError):
        Settings(database_schema="bad-schema;drop")


@pytest.mark.parametrize("schema", ["public", "_x", "t_1234", "a" * 63])
def test_valid_database_schema_is_accepted(monkeypatch: pytest.MonkeyPatch, schema: str) -> None:
    monkeypatch.setenv("SA01_DATABASE_SCHEMA", schema)
    assert Settings().database_schema == schema


def test_topic_applies_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().topic("conversation.inbound") == "conversation.inbound"
    monkeypatch.setenv("SA01_TOPIC_PREFIX", "t42.")
    assert Settings().topic("conversation.inbound") == "t42.conversation.inbound"


def test_provider_key_for_openai_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "anthropic-secret")
    settings = Settings()
    key = settings.provider_key("openai/gpt-4o")
    assert key is not None
    assert key.get_secret_value() == SECRET
    other = settings.provider_key("anthropic/claude-3-5-sonnet")
    assert other is not None
    assert other.get_secret_value() == "anthropic-secret"


def test_provider_key_is_none_when_unset_or_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().provider_key("openai/gpt-4o") is None
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert Settings().provider_key("mistral/mistral-large") is None


def test_every_provider_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for provider, variable in PROVIDER_KEY_VARIABLES.items():
        monkeypatch.setenv(variable, f"key-of-{provider}")
    settings = Settings()
    for provider in PROVIDER_KEY_VARIABLES:
        key = settings.provider_key(f"{provider}/some-model")
        assert key is not None
        assert key.get_secret_value() == f"key-of-{provider}"


def test_relay_lock_key_is_stable_across_settings_objects() -> None:
    assert Settings().relay_lock_key == Settings().relay_lock_key


def test_relay_lock_key_is_stable_across_processes() -> None:
    # Not Python's salted ``hash``: the same value in every process (FNV-1a).
    assert Settings().relay_lock_key == fnv1a_63("outbox-relay:public")
    assert Settings(database_schema="t_1").relay_lock_key == fnv1a_63("outbox-relay:t_1")


def test_relay_lock_key_differs_between_schemas() -> None:
    keys = {Settings(database_schema=name).relay_lock_key for name in ("public", "t_a", "t_b")}
    assert len(keys) == 3


@pytest.mark.parametrize("schema", ["public", "t_1", "z" * 63, "_"])
def test_relay_lock_key_fits_in_signed_64_bits(schema: str) -> None:
    key = Settings(database_schema=schema).relay_lock_key
    assert isinstance(key, int)
    assert -(2**63) <= key <= 2**63 - 1


def test_relay_transactional_id_names_app_and_schema() -> None:
    settings = Settings(app_id="app", database_schema="t_9")
    assert settings.relay_transactional_id == "app-t_9-outbox-relay"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.topic_prefix = "x"  # type: ignore[misc]


def test_defaults_hold_no_password() -> None:
    settings = Settings()
    assert urlsplit(settings.database_url).password is None
    assert urlsplit(settings.redis_url).password is None


def test_load_reads_the_services_credentials_file_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "credentials.env").write_text(
        "# generated\n"
        "SA01_POSTGRES_PASSWORD=unused-by-settings\n"
        "SA01_DATABASE_URL=postgresql://sa01:generated-pw@127.0.0.1:15432/sa01\n"
        "SA01_REDIS_URL=redis://:redis-pw@127.0.0.1:16379/0\n"
    )
    monkeypatch.setenv("SA01_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SA01_REDIS_URL", "redis://:from-env@127.0.0.1:6379/0")

    settings = Settings.load(app_id="given")

    assert settings.database_url == "postgresql://sa01:generated-pw@127.0.0.1:15432/sa01"
    assert settings.redis_url == "redis://:from-env@127.0.0.1:6379/0"
    assert settings.app_id == "given"
    assert Settings().database_url != settings.database_url, "Settings() reads no file"
