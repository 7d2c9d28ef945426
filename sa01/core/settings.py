"""All settings of the project in one pydantic-settings object.

Every variable is read from the environment with the ``SA01_`` prefix (the seed's
names: ``SA01_KAFKA_BOOTSTRAP_SERVERS``, ``SA01_DATABASE_URL``, ``SA01_REDIS_URL``,
``SA01_SOMABRAIN_URL``, ``SA01_TEMPORAL_HOST``), except provider keys, which keep each
provider's usual variable (``OPENAI_API_KEY``, ...). Defaults point at 127.0.0.1 and
hold no password: :meth:`Settings.load` adds the local services' generated credentials.
Nothing else in the project reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["CREDENTIALS_FILE", "PROVIDER_KEY_VARIABLES", "Settings"]

CREDENTIALS_FILE = "credentials.env"
#: The most outbox shards a deployment may have (``SA01_OUTBOX_SHARDS``).
MAX_OUTBOX_SHARDS = 64
"""The file ``scripts/services.sh`` writes in its state directory (see Settings.load)."""

#: Provider key variables, by provider prefix of a litellm model name.
PROVIDER_KEY_VARIABLES: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
}

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Settings(BaseSettings):
    """Settings of the worker, the relay and the commands (env prefix ``SA01_``)."""

    model_config = SettingsConfigDict(env_prefix="SA01_", extra="ignore", frozen=True)

    # --- services -------------------------------------------------------------
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description=(
            "How every Kafka client (worker, relay, commands, admin) talks to the brokers."
        ),
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism with SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: str | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates."
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="PEM client certificate (mutual TLS), with SA01_KAFKA_SSL_KEYFILE."
    )
    kafka_ssl_keyfile: str | None = Field(None, description="PEM private key of the client.")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of SA01_KAFKA_SSL_KEYFILE, when it is encrypted."
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host connected to."
    )
    database_url: str = Field(
        "postgresql://sa01@127.0.0.1:5432/sa01",
        description=(
            "PostgreSQL URL; scripts/services.sh writes one with its generated password to"
            " $SA01_STATE_DIR/credentials.env."
        ),
    )
    database_schema: str = Field(
        "public", description="PostgreSQL schema holding the project's tables."
    )
    database_pool_max_size: int = Field(10, ge=1)
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (redis://:PASSWORD@host:port/db); see SA01_DATABASE_URL.",
    )
    somabrain_url: str | None = Field(
        None,
        description=(
            "SomaBrain base URL; unset: memory is off and somabrain reads not_configured."
            " A standard SomaBrain listens on port 30101 (http://HOST:30101; add this host"
            " to its ALLOWED_HOSTS); the loopback (python -m loopback.somabrain_server) on"
            " 9696."
        ),
    )
    somabrain_token: SecretStr | None = Field(None, description="Bearer token for SomaBrain.")
    somabrain_timeout_seconds: float = Field(5.0, gt=0)
    somabrain_health_timeout_seconds: float = Field(
        5.0,
        gt=3.0,
        description=(
            "Timeout of a GET /health on SomaBrain (probe and store confirmation); above"
            " SomaBrain's own 3 s per sub-check (its sub-checks run one after the other)."
        ),
    )
    memory_enabled: bool = Field(
        True, description="Recall and remember through SomaBrain (when SA01_SOMABRAIN_URL is set)."
    )
    memory_sync_batch_size: int = Field(200, ge=1)
    memory_sync_interval_seconds: float = Field(5.0, gt=0)
    memory_sync_concurrency: int = Field(
        8, ge=1, description="(tenant, agent) groups the memory sync replays at once."
    )
    session_context_turns: int = Field(20, ge=1, description="Turns kept per session in Redis.")
    session_context_ttl_seconds: int = Field(86_400, ge=60)
    temporal_host: str = "127.0.0.1:7233"

    # --- the stream processor --------------------------------------------------
    app_id: str = Field("sa01-resilience", description="Faust app id and consumer group.")
    topic_prefix: str = Field("", description="Prefix of every topic name (tests isolate by it).")
    topic_partitions: int = Field(6, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    data_dir: str = Field(
        ".run/faust", description="Where Faust keeps its per-app data directories."
    )
    web_host: str = Field(
        "127.0.0.1",
        description=(
            "Address the worker's and the relay's web servers bind to (Faust's web_bind)"
            " and the host of their URLs."
        ),
    )
    web_port: int = Field(6066, ge=0, le=65535)
    web_allowed_hosts: str = Field(
        "",
        description=(
            "Host names accepted in Host and Origin besides SA01_WEB_HOST, localhost and"
            " 127.0.0.1, comma-separated (the name a reverse proxy or Prometheus uses)."
        ),
    )
    web_max_body_bytes: int = Field(
        16 * 1024, ge=64, description="Largest request body the web pages accept (else 413)."
    )
    operator_token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token of every state-changing web endpoint and the circuit command;"
            " unset: those endpoints are refused."
        ),
    )
    worker_instance_id: str | None = Field(
        None, description="Static group membership id: a restarted worker rejoins at once."
    )
    session_timeout_seconds: float = Field(10.0, gt=0)
    shutdown_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="After SIGTERM or SIGINT the worker exits within this many seconds, "
        "stopped cleanly or not (exit code 4 when the bound cut it short).",
    )
    topic_check_interval_seconds: float = Field(
        10.0,
        gt=0,
        description="How often the worker checks that the broker still has the project's "
        "topics (a deleted topic stops it with one clear error, exit code 3).",
    )
    max_in_flight: int = Field(256, ge=1, description="Messages processed at once per worker.")
    max_in_flight_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Bytes of messages processed at once per worker (one larger message "
        "still passes alone).",
    )
    tenant_max_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of SA01_MAX_IN_FLIGHT one tenant's sessions may hold together (and "
        "of SA01_BACKGROUND_READ_AHEAD its memories).",
    )
    max_parked: int = Field(
        4096,
        ge=1,
        description="Messages parked (behind their session's running one, or over their "
        "tenant's share) before the worker stops reading altogether (back pressure); "
        "memories parked over their share before the memory topic is no longer fetched.",
    )
    max_parked_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Bytes of parked messages before the worker stops reading altogether.",
    )
    worker_role: Literal["all", "replies", "background"] = Field(
        "all",
        description="What a worker consumes: `all`; `replies` (conversation.inbound and"
        " degradation.events); `background` (memories, uploads, backups and the memory"
        " sync). Workers of both roles in one consumer group split the work by topic, so"
        " a backlog drains in a process of its own (docs/architecture.md, Replies first).",
    )
    background_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness a `background` worker adds to its own process at start, so"
        " that the operating system gives replies' processes the CPU first (0: none).",
    )
    background_max_in_flight: int = Field(
        64,
        ge=1,
        description="Background records (memories, uploads, backups, memory sync) processed"
        " at once per worker while no reply is in flight.",
    )
    background_max_in_flight_busy: int = Field(
        16,
        ge=1,
        description="At most this many background records at once while replies flow; fewer,"
        " down to none, while the event loop lags (docs/architecture.md, Replies first).",
    )
    background_read_ahead: int = Field(
        256,
        ge=1,
        description="Records a background agent (memories, uploads, backups) takes ahead of"
        " its work, parked records apart; at this many its topic is no longer fetched until"
        " half are finished, so a backlog never stands between a new message and the"
        " conversation agent.",
    )
    background_lane_max_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of SA01_BACKGROUND_READ_AHEAD one tenant's agent's memories (one"
        " lane of a background agent) may hold; its further records wait (parked), holding"
        " no slot. A conversation session always holds one slot: the message it answers.",
    )
    fetch_max_records: int = Field(
        100,
        ge=1,
        description="Records one fetch hands to the agents at most (Faust's"
        " broker_max_poll_records): a record fetched after a batch waits for the whole batch"
        " to be handed out.",
    )
    background_max_loop_lag_seconds: float = Field(
        0.005,
        gt=0,
        description="While replies flow, background work shrinks when the event loop lags more"
        " than this (raise it to drain backlogs faster at some cost in reply latency).",
    )
    backlog_sample_seconds: float = Field(
        2.0, gt=0, description="How often each agent's lag per partition is sampled."
    )
    processing_max_attempts: int = Field(3, ge=1)
    processing_retry_backoff_seconds: float = Field(0.2, ge=0)
    infrastructure_retry_max_seconds: float = Field(5.0, gt=0)
    idempotency_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    group_commit_max_messages: int = Field(
        256,
        ge=1,
        description="Answered messages committed together in one PostgreSQL transaction at "
        "most (and idempotency keys looked up together); 1 commits each message alone.",
    )
    group_commit_max_wait_seconds: float = Field(
        0.002,
        ge=0,
        description="How long a group commit (or lookup) waits for more messages after its "
        "first; 0: only the messages that arrived during the previous one join it.",
    )

    # --- the responder (LLM) ---------------------------------------------------
    responder: Literal["litellm", "echo"] = "litellm"
    llm_model: str = "openai/gpt-4o"
    llm_api_base: str | None = None
    llm_timeout_seconds: float = Field(30.0, gt=0)
    llm_chains_file: str | None = Field(
        None, description="TOML file with the LLM chains per use case (default: the seed's)."
    )
    llm_fallback_models: str = Field(
        "", description="Models tried after SA01_LLM_MODEL, comma-separated (same API base)."
    )
    llm_breaker_consecutive_failures: int = Field(
        5, ge=1, description="Consecutive failures that open a model's circuit."
    )
    llm_degraded_reply: bool = Field(
        True,
        description="With every model down, reply at once (degraded) and answer later.",
    )
    deferred_answer_interval_seconds: float = Field(
        5.0, gt=0, description="How often owed answers are retried."
    )
    llm_breaker_wait_seconds: float = Field(
        30.0, gt=0, description="How long an open model circuit waits before a trial call."
    )
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    anthropic_api_key: SecretStr | None = Field(None, validation_alias="ANTHROPIC_API_KEY")
    openrouter_api_key: SecretStr | None = Field(None, validation_alias="OPENROUTER_API_KEY")
    deepseek_api_key: SecretStr | None = Field(None, validation_alias="DEEPSEEK_API_KEY")

    # --- audio (voice messages) -------------------------------------------------
    tts_chain: str = Field(
        "elevenlabs,openai,kokoro,native",
        description="TTS links in order (elevenlabs, openai, kokoro, native = the client's voice).",
    )
    stt_chain: str = Field(
        "openai,deepgram,native",
        description="STT links in order (openai, deepgram, native = the client's transcript).",
    )
    audio_timeout_seconds: float = Field(20.0, gt=0, description="Timeout of one TTS/STT call.")
    audio_breaker_consecutive_failures: int = Field(
        3, ge=1, description="Consecutive failures that open an audio provider's circuit."
    )
    audio_breaker_wait_seconds: float = Field(
        30.0, gt=0, description="How long an open audio circuit waits before a trial call."
    )
    elevenlabs_url: str = "https://api.elevenlabs.io"
    elevenlabs_voice_id: str = "21m00Tcm4TlvDq8ikWAM"
    elevenlabs_model: str = "eleven_multilingual_v2"
    elevenlabs_api_key: SecretStr | None = Field(None, validation_alias="ELEVENLABS_API_KEY")
    openai_audio_api_base: str | None = Field(
        None, description="API base of OpenAI speech and transcription (default: OpenAI's)."
    )
    tts_openai_model: str = "openai/tts-1"
    tts_openai_voice: str = "alloy"
    stt_openai_model: str = "openai/whisper-1"
    deepgram_url: str = "https://api.deepgram.com"
    deepgram_model: str = "nova-2"
    deepgram_api_key: SecretStr | None = Field(None, validation_alias="DEEPGRAM_API_KEY")
    kokoro_voice: str = "af_heart"

    # --- storage (uploads, voice audio, backups) ----------------------------------
    storage_chain: str = Field(
        "s3,local,redis",
        description="Stores in order; the first is the primary, the others hold temporary copies.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (default: AWS for the region)."
    )
    s3_bucket: str = "sa01-uploads"
    s3_region: str = "us-east-1"
    aws_access_key_id: SecretStr | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    storage_local_root: str = Field(".run/storage", description="Root of the local file store.")
    storage_redis_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="Lifetime of a temporary object kept in Redis."
    )
    storage_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one store call.")
    storage_breaker_consecutive_failures: int = Field(
        3, ge=1, description="Consecutive failures that open a store's circuit."
    )
    storage_breaker_wait_seconds: float = Field(
        5.0, gt=0, description="How long an open store circuit waits before a trial call."
    )
    upload_max_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1,
        description="Largest attachment accepted inline in a message (base64 adds a third).",
    )
    kafka_max_message_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1_048_588,
        description=(
            "Largest record of the topics that carry uploads (conversation.inbound,"
            " upload.retry and their .dlq); the producers allow it too."
        ),
    )
    upload_max_attempts: int = Field(
        30, ge=1, description="Attempts of a queued upload before upload.retry.dlq."
    )
    upload_retry_backoff_seconds: float = Field(0.5, gt=0)
    upload_retry_max_backoff_seconds: float = Field(30.0, gt=0)
    backup_store: Literal["local", "s3"] = Field(
        "local", description="Where backup.tasks copy objects to."
    )
    backup_local_root: str = Field(".run/backup", description="Root of the local backup store.")
    backup_s3_bucket: str = "sa01-backup"

    # --- the outbox relay ------------------------------------------------------
    relay_enabled_in_worker: bool = Field(
        True, description="The worker also competes for the relay lock (hot standby)."
    )
    relay_batch_size: int = Field(
        2000,
        ge=1,
        description="Rows one relay transaction publishes at most (a backlog drains in"
        " transactions of this many; live traffic in whatever is pending).",
    )
    relay_batch_max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Payload bytes one relay transaction claims at most (its first row"
        " whatever its size): bounds the relay's memory when rows are large.",
    )
    outbox_shards: int = Field(
        1,
        ge=1,
        le=MAX_OUTBOX_SHARDS,
        description="Shards of the outbox by key hash, each published by one relay at a"
        " time; one count per deployment, recorded by the first relay (a relay of another"
        " count publishes nothing); `faust -A streams outbox-shards --set N` changes it.",
    )
    relay_poll_interval_seconds: float = Field(
        0.5, gt=0, description="How often the active relay looks for rows without a wake-up."
    )
    relay_notify_interval_seconds: float = Field(
        0.02,
        gt=0,
        description="At most one NOTIFY per interval wakes the active relay of another process.",
    )
    relay_lock_retry_seconds: float = Field(1.0, gt=0)
    relay_transaction_timeout_seconds: float = Field(30.0, gt=0)
    outbox_max_attempts: int = Field(10, ge=1)
    relay_web_port: int = Field(
        6067, ge=0, le=65535, description="Port of the standalone relay's /metrics (0: none)."
    )
    outbox_retention_seconds: int = Field(
        0,
        ge=0,
        description="How long published outbox rows are kept, marked published (0: deleted"
        " as their batch commits; Kafka and the ledger are the record).",
    )
    relay_cleanup_interval_seconds: float = Field(
        300.0, gt=0, description="How often the active relay deletes old rows and records."
    )

    # --- the resilient producer ------------------------------------------------
    producer_send_timeout_seconds: float = Field(
        5.0, gt=0, description="How long a send waits for Kafka before using the outbox."
    )
    producer_circuit_failures: int = Field(
        3, ge=1, description="Consecutive Kafka failures that send records to the outbox at once."
    )
    producer_circuit_open_seconds: float = Field(
        5.0, gt=0, description="How long the Kafka gate stays open before a trial send."
    )
    producer_send_budget_seconds: float = Field(
        0.05,
        gt=0,
        description=(
            "Longest a send waits for Kafka's acknowledgement before it writes the record to"
            " the outbox (Kafka may still deliver it: consumers deduplicate by idempotency-key)."
        ),
    )

    # --- health monitoring -----------------------------------------------------
    health_interval_seconds: float = Field(2.0, gt=0, description="Time between two probes.")
    health_timeout_seconds: float = Field(2.0, gt=0, description="A probe slower fails.")
    health_probes: str = Field(
        "postgres,kafka,redis,somabrain,storage,audio",
        description=(
            "Services to probe, comma-separated (add temporal when it runs); storage and"
            " audio cover every store and TTS/STT provider of the chains."
        ),
    )
    health_slow_seconds: float = Field(
        0.5, gt=0, description="A probe slower than this reports the service degraded."
    )

    # --- logging ---------------------------------------------------------------
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"

    @field_validator("database_schema")
    @classmethod
    def _schema_is_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("must be a lower-case SQL identifier (letters, digits, _)")
        return value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"SA01_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "SA01_KAFKA_SASL_USERNAME and SA01_KAFKA_SASL_PASSWORD"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("SA01_KAFKA_SSL_CERTFILE and SA01_KAFKA_SSL_KEYFILE go together")
        return self

    @model_validator(mode="after")
    def _uploads_fit_in_a_record(self) -> Settings:
        encoded = (self.upload_max_bytes + 2) // 3 * 4 + 64 * 1024  # base64 and the envelope
        if encoded > self.kafka_max_message_bytes:
            raise ValueError(
                f"SA01_UPLOAD_MAX_BYTES={self.upload_max_bytes} needs records of about {encoded}"
                f" bytes, more than SA01_KAFKA_MAX_MESSAGE_BYTES={self.kafka_max_message_bytes}"
            )
        return self

    @classmethod
    def load(cls, **values: Any) -> Settings:  # field values, as pydantic's __init__ takes them
        """Settings from the environment, then the local services' credentials file.

        ``scripts/services.sh`` writes ``$SA01_STATE_DIR/credentials.env`` (default
        ``.run/credentials.env``, git-ignored) with the URLs and generated passwords of
        the services it runs; a variable set in the environment wins over the file, and
        ``values`` over both. Every entry point (the app, preflight, demo, bench) loads
        its settings this way; ``Settings()`` alone reads the environment only.
        """
        state_dir = os.environ.get("SA01_STATE_DIR") or ".run"
        return cls(_env_file=Path(state_dir) / CREDENTIALS_FILE, **values)

    def topic(self, name: str) -> str:
        """The full name of one of the project's topics (with the configured prefix)."""
        return f"{self.topic_prefix}{name}"

    @property
    def answers_replies(self) -> bool:
        """This worker consumes conversation.inbound and degradation.events."""
        return self.worker_role != "background"

    @property
    def runs_background(self) -> bool:
        """This worker consumes memories, upload and backup tasks and runs the memory sync."""
        return self.worker_role != "replies"

    @property
    def memory_active(self) -> bool:
        """Recall and remember happen: memory is enabled and SomaBrain is configured."""
        return self.memory_enabled and bool(self.somabrain_url)

    def provider_key(self, model: str) -> SecretStr | None:
        """The API key configured for a litellm model name such as ``openai/gpt-4o``."""
        provider = model.split("/", 1)[0]
        return {
            "openai": self.openai_api_key,
            "anthropic": self.anthropic_api_key,
            "openrouter": self.openrouter_api_key,
            "deepseek": self.deepseek_api_key,
        }.get(provider)

    @property
    def relay_transactional_id(self) -> str:
        """The one transactional id of the active relay: a new holder fences the old."""
        return f"{self.app_id}-{self.database_schema}-outbox-relay"

    @property
    def relay_lock_key(self) -> int:
        """The advisory lock key that elects the active relay for this schema."""
        return _stable_hash(f"outbox-relay:{self.database_schema}")

    def relay_shard_transactional_id(self, shard: int) -> str:
        """The transactional id of one outbox shard's relay (with one shard: the old id)."""
        if self.outbox_shards == 1:
            return self.relay_transactional_id
        return f"{self.relay_transactional_id}-{shard}-of-{self.outbox_shards}"

    def relay_shard_lock_key(self, shard: int) -> int:
        """The advisory lock key of one outbox shard (with one shard: the old key)."""
        if self.outbox_shards == 1:
            return self.relay_lock_key
        return _stable_hash(f"outbox-relay:{self.database_schema}:{shard}/{self.outbox_shards}")

    @property
    def deferred_answer_lock_key(self) -> int:
        """The advisory lock key that elects the one deferred answerer for this schema."""
        return _stable_hash(f"deferred-answer:{self.database_schema}")

    @property
    def memory_sync_lock_key(self) -> int:
        """The advisory lock key that elects the one memory syncer for this schema."""
        return _stable_hash(f"memory-sync:{self.database_schema}")


def _stable_hash(text: str) -> int:
    """A signed 63-bit FNV-1a hash, stable across processes (unlike ``hash``)."""
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value ^= byte
        value = (value * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value & 0x7FFFFFFFFFFFFFFF
