"""Per-test isolation on the shared services, and factories for workers and clients.

Each test gets its own topic prefix, PostgreSQL schema and consumer group (the
``stack`` fixture), so tests can run in parallel on one broker and one database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from psycopg import sql

from loopback import LLMServer, SomaBrainServer
from loopback.audio_server import AudioServer
from loopback.s3_server import S3Server
from sa01.core.kafka_security import librdkafka_config
from sa01.core.settings import Settings
from sa01.core.topics import ensure_topics, project_topics
from sa01.outbox.migrate import migrate
from tests.fix_services import ServiceEndpoints
from tests.support.worker import WorkerFactory


def make_settings(services: ServiceEndpoints, test_id: str, **overrides: object) -> Settings:
    """Settings isolated by ``test_id`` (topics, schema, group)."""
    values: dict[str, object] = {
        "kafka_bootstrap_servers": services.kafka_bootstrap,
        "database_url": services.database_url,
        "redis_url": services.redis_url,
        "database_schema": test_id,
        "topic_prefix": f"{test_id}.",
        "app_id": test_id,
        "topic_partitions": 4,
        "responder": "echo",
        "relay_poll_interval_seconds": 0.2,
        # Audio and storage providers are probed only by the tests about them.
        "health_probes": "postgres,kafka,redis,somabrain",
        # Configured but not running (as the old default was): memory records are written.
        "somabrain_url": "http://127.0.0.1:9",
        "storage_chain": "local,redis",
        "storage_local_root": f"/tmp/sa01-tests/{test_id}/storage",
        "backup_local_root": f"/tmp/sa01-tests/{test_id}/backup",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def test_id() -> str:
    """A short unique identifier, valid as a schema name and a topic prefix."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def stack(services: ServiceEndpoints, test_id: str) -> AsyncIterator[Settings]:
    """Migrated schema and created topics for this test; dropped afterwards."""
    settings = make_settings(services, test_id)
    await migrate(settings)
    await ensure_topics(settings)
    yield settings
    await asyncio.to_thread(_delete_topics, settings)
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(test_id))
        )


def _delete_topics(settings: Settings) -> None:
    admin = AdminClient(librdkafka_config(settings))
    names = [spec.name for spec in project_topics(settings)]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        try:
            future.result()
        except Exception:
            pass


def _serving(server: LLMServer | SomaBrainServer | AudioServer | S3Server) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def llm_server() -> Iterator[LLMServer]:
    """A loopback server speaking the OpenAI and Anthropic APIs (replies "[primary] ...")."""
    yield from _serving(LLMServer(name="primary"))


@pytest.fixture
def fallback_llm_server() -> Iterator[LLMServer]:
    """A second loopback LLM server (replies "[fallback] ...")."""
    yield from _serving(LLMServer(name="fallback"))


@pytest.fixture
def somabrain() -> Iterator[SomaBrainServer]:
    """A loopback server speaking SomaBrain's API."""
    yield from _serving(SomaBrainServer(name="somabrain"))


@pytest.fixture
def elevenlabs() -> Iterator[AudioServer]:
    """A loopback server standing for ElevenLabs (TTS)."""
    yield from _serving(AudioServer(name="elevenlabs"))


@pytest.fixture
def openai_audio() -> Iterator[AudioServer]:
    """A loopback server standing for OpenAI speech and transcription."""
    yield from _serving(AudioServer(name="openai"))


@pytest.fixture
def deepgram() -> Iterator[AudioServer]:
    """A loopback server standing for Deepgram (STT)."""
    yield from _serving(AudioServer(name="deepgram"))


@pytest.fixture
def s3() -> Iterator[S3Server]:
    """moto's S3 server on loopback; tests stop and start it for real."""
    yield from _serving(S3Server())


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Starts ``faust -A streams worker`` processes; kills what is left at the end."""
    factory = WorkerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.kill_all()
