"""One set of Kafka security settings, as librdkafka and Faust/aiokafka take them."""

from __future__ import annotations

import pytest
from faust.auth import SASLCredentials
from pydantic import SecretStr, ValidationError

from sa01.core.kafka_security import describe_listener, faust_credentials, librdkafka_config
from sa01.core.settings import Settings


def sasl(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "kafka_bootstrap_servers": "127.0.0.1:9094",
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": "sa01",
        "kafka_sasl_password": SecretStr("kafka-pass-123"),
    } | overrides
    return Settings(**values)  # type: ignore[arg-type]


def test_plaintext_adds_nothing_but_the_protocol() -> None:
    assert librdkafka_config(Settings()) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "plaintext",
    }
    assert faust_credentials(Settings()) is None


def test_sasl_sets_the_mechanism_and_the_user_for_both_libraries() -> None:
    settings = sasl()

    config = librdkafka_config(settings)
    credentials = faust_credentials(settings)

    assert config["security.protocol"] == "sasl_plaintext"
    assert (config["sasl.mechanism"], config["sasl.username"]) == ("SCRAM-SHA-256", "sa01")
    assert config["sasl.password"] == "kafka-pass-123"
    assert "ssl.ca.location" not in config
    assert isinstance(credentials, SASLCredentials)
    assert credentials.mechanism.value == "SCRAM-SHA-256"
    assert credentials.protocol.value == "SASL_PLAINTEXT" and credentials.ssl_context is None


def test_sasl_ssl_adds_the_ca_and_hostname_checking(tmp_path: object) -> None:
    import ssl

    ca = ssl.get_default_verify_paths().cafile
    settings = sasl(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=ca)

    config = librdkafka_config(settings)
    credentials = faust_credentials(settings)

    assert config["security.protocol"] == "sasl_ssl"
    assert config["ssl.ca.location"] == ca
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.ssl_context.check_hostname is True


def test_incomplete_security_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="SA01_KAFKA_SASL_USERNAME"):
        Settings(kafka_security_protocol="SASL_SSL")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="go together"):
        Settings(kafka_ssl_certfile="/x.pem")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(kafka_sasl_mechanism="GSSAPI")  # type: ignore[call-arg]


def test_the_listener_description_names_protocol_mechanism_and_user_but_no_password() -> None:
    text = describe_listener(sasl())

    assert text == "127.0.0.1:9094 (SASL_PLAINTEXT, SCRAM-SHA-256, user sa01)"
    assert "kafka-pass" not in text
