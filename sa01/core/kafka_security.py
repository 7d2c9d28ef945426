"""The Kafka security settings, in the form each client library takes them.

One set of settings (``SA01_KAFKA_SECURITY_PROTOCOL``, ``SA01_KAFKA_SASL_*``,
``SA01_KAFKA_SSL_*``) applies to every client:

* :func:`librdkafka_config` for confluent-kafka (the resilient producer, the relay,
  the commands, the admin client that creates topics, probes);
* :func:`faust_credentials` for Faust, which hands them to aiokafka (the worker's
  consumer and producer).

:func:`describe_listener` names the listener and mechanism in error lines, without the
password.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from sa01.core.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import KafkaError
    from faust.types.auth import CredentialsT

__all__ = [
    "ClientErrors",
    "describe_listener",
    "faust_credentials",
    "kafka_ssl_context",
    "librdkafka_config",
]


def _uses_ssl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """``bootstrap.servers`` and the security keys of librdkafka for ``settings``."""
    config: dict[str, str] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol.lower(),
    }
    if _uses_sasl(settings):
        assert settings.kafka_sasl_username is not None  # checked by Settings
        assert settings.kafka_sasl_password is not None
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if _uses_ssl(settings):
        if settings.kafka_ssl_cafile:
            config["ssl.ca.location"] = settings.kafka_ssl_cafile
        if settings.kafka_ssl_certfile:
            assert settings.kafka_ssl_keyfile is not None  # checked by Settings: both or none
            config["ssl.certificate.location"] = settings.kafka_ssl_certfile
            config["ssl.key.location"] = settings.kafka_ssl_keyfile
        if settings.kafka_ssl_key_password:
            config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if settings.kafka_ssl_check_hostname else "none"
        )
    return config


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of aiokafka: the CA, the client certificate, hostname checking.

    Reads the files named by the settings (call it when the app is built, not on import).
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_cafile or None
    )
    if settings.kafka_ssl_certfile and settings.kafka_ssl_keyfile:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            settings.kafka_ssl_certfile,
            settings.kafka_ssl_keyfile,
            password.get_secret_value() if password else None,
        )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for ``settings`` (None for PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials

    context = kafka_ssl_context(settings) if _uses_ssl(settings) else None
    if _uses_sasl(settings):
        assert settings.kafka_sasl_password is not None  # checked by Settings
        credentials = SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
        return credentials
    if context is not None:
        return SSLCredentials(context)
    return None


def describe_listener(settings: Settings) -> str:
    """``127.0.0.1:9094 (SASL_SSL, SCRAM-SHA-512, user sa01)``: where and how, no secret."""
    parts: list[str] = [settings.kafka_security_protocol]
    if _uses_sasl(settings):
        parts += [settings.kafka_sasl_mechanism, f"user {settings.kafka_sasl_username}"]
    return f"{settings.kafka_bootstrap_servers} ({', '.join(parts)})"


_REFUSALS = {
    "_AUTHENTICATION": "refused the credentials",
    "SASL_AUTHENTICATION_FAILED": "refused the credentials",
    "_SSL": "failed the TLS handshake",
}


class ClientErrors:
    """librdkafka's ``error_cb`` for one client: keeps what it reported, for one line."""

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []

    def __call__(self, error: KafkaError) -> None:
        """Record one error (called by librdkafka from ``poll``)."""
        self.errors.append(error)

    def refusal(self, settings: Settings) -> str | None:
        """One line naming the listener and mechanism when the broker refused us, else None.

        An authentication or TLS failure comes back from a metadata call as a bare
        transport error; the reason is in what librdkafka reported to ``error_cb``.
        """
        for error in self.errors:
            what = _REFUSALS.get(error.name())
            if what:
                reason = str(error.str()).split(": ", 1)[-1]
                return f"Kafka at {describe_listener(settings)} {what}: {reason}"
        return None
