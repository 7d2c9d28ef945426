"""The real services for the whole session: Kafka, PostgreSQL, Redis.

Where a Docker engine answers (and ``SA01_TEST_SERVICES`` is not ``native``), they
run in testcontainers; otherwise ``scripts/services.sh up`` starts them natively (it
reuses what already runs). Nothing is mocked, and a service that cannot be started
fails the run: it is never turned into skipped tests.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sa01.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT = ROOT / "scripts" / "services.sh"


@dataclass(frozen=True)
class ServiceEndpoints:
    """Where the session's services answer, and whether the script controls them."""

    kafka_bootstrap: str
    database_url: str
    redis_url: str
    native: bool

    def control(self, action: str, name: str, *extra: str) -> None:
        """Stop or start one native service (``action`` is ``stop`` or ``start``)."""
        if not self.native:
            raise RuntimeError("fault tests that stop a service need the native services")
        subprocess.run([str(SERVICES_SCRIPT), action, name, *extra], check=True, timeout=180)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def _native() -> ServiceEndpoints:
    """Start (or reuse) the native services; their URLs and generated passwords come from
    the environment, else the credentials file ``services.sh`` writes (Settings.load)."""
    subprocess.run([str(SERVICES_SCRIPT), "up"], check=True, timeout=900)
    settings = Settings.load()
    return ServiceEndpoints(
        kafka_bootstrap=settings.kafka_bootstrap_servers,
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        native=True,
    )


def _containers(stack: list[object]) -> ServiceEndpoints:  # pragma: no cover - needs Docker
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    password = secrets.token_hex(16)
    kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
    postgres = PostgresContainer("postgres:16", username="sa01", password=password, dbname="sa01")
    redis = RedisContainer("redis:7", password=password)
    for container in (kafka, postgres, redis):
        container.start()
        stack.append(container)
    host = postgres.get_container_host_ip()
    return ServiceEndpoints(
        kafka_bootstrap=kafka.get_bootstrap_server(),
        database_url=f"postgresql://sa01:{password}@{host}:{postgres.get_exposed_port(5432)}/sa01",
        redis_url=(
            f"redis://:{password}@{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
        ),
        native=False,
    )


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceEndpoints]:
    """The running services (started once per session, or reused)."""
    mode = os.environ.get("SA01_TEST_SERVICES", "auto")
    started: list[object] = []
    if mode == "containers" or (mode == "auto" and _docker_answers()):
        endpoints = _containers(started)
    else:
        endpoints = _native()
    try:
        yield endpoints
    finally:
        for container in reversed(started):
            container.stop()  # type: ignore[attr-defined]
