"""The project's topics and their creation (topic auto-creation is off on the broker)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sa01.core.errors import InfrastructureUnavailableError
from sa01.core.kafka_security import ClientErrors, describe_listener, librdkafka_config
from sa01.core.settings import Settings

__all__ = [
    "BACKUP_TASKS",
    "CONVERSATION_INBOUND",
    "CONVERSATION_OUTBOUND",
    "DEGRADATION_EVENTS",
    "MEMORY_REMEMBER",
    "OUTBOX_LEDGER",
    "UPLOAD_RETRY",
    "TopicSpec",
    "dlq",
    "ensure_topics",
    "missing_topics",
    "project_topics",
]

logger = logging.getLogger(__name__)
_QUIET = logging.getLogger(f"{__name__}.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

CONVERSATION_INBOUND = "conversation.inbound"
CONVERSATION_OUTBOUND = "conversation.outbound"
DEGRADATION_EVENTS = "degradation.events"
MEMORY_REMEMBER = "somabrain.memory.remember"
UPLOAD_RETRY = "upload.retry"
BACKUP_TASKS = "backup.tasks"
#: The relay's commit log: one record per Kafka transaction it committed.
OUTBOX_LEDGER = "sa01.outbox.ledger"


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project creates: name, partitions and topic-level configuration."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def project_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the worker, the relay and the commands use."""
    parts = settings.topic_partitions
    data_topics = [
        CONVERSATION_INBOUND,
        CONVERSATION_OUTBOUND,
        MEMORY_REMEMBER,
        UPLOAD_RETRY,
        BACKUP_TASKS,
    ]
    # Uploads travel inline on these topics (and their dead letters keep the bytes).
    large = {CONVERSATION_INBOUND, UPLOAD_RETRY}
    big = {"max.message.bytes": str(settings.kafka_max_message_bytes)}
    specs = [
        TopicSpec(settings.topic(name), parts, dict(big) if name in large else {})
        for name in data_topics
    ]
    specs += [
        TopicSpec(settings.topic(dlq(name)), parts, dict(big) if name in large else {})
        for name in data_topics
    ]
    specs.append(TopicSpec(settings.topic(DEGRADATION_EVENTS), parts))
    specs.append(TopicSpec(settings.topic(dlq(DEGRADATION_EVENTS)), parts))
    # Faust's own topics, created here so that the consumer never subscribes before
    # they exist (a missing changelog leaves the GlobalTable unrecovered).
    specs.append(
        TopicSpec(
            f"{settings.app_id}-service_health-changelog",
            parts,
            {"cleanup.policy": "compact"},
        )
    )
    specs.append(TopicSpec(f"{settings.app_id}-__assignor-__leader", 1))
    specs.append(
        TopicSpec(
            settings.topic(OUTBOX_LEDGER),
            1,
            {
                "cleanup.policy": "compact",
                "segment.ms": "600000",
                "min.cleanable.dirty.ratio": "0.1",
            },
        )
    )
    return specs


def _topic_names(
    admin: AdminClient, settings: Settings, errors: ClientErrors, timeout: float
) -> set[str]:
    """The broker's topics; a refused login or TLS handshake fails at once, in one line."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return set(admin.list_topics(timeout=min(2.0, timeout)).topics)
        except KafkaException as exc:
            admin.poll(0.2)
            refusal = errors.refusal(settings)
            if refusal or time.monotonic() >= deadline:
                raise InfrastructureUnavailableError(
                    "kafka",
                    refusal or f"Kafka at {describe_listener(settings)} is not reachable ({exc})",
                ) from exc


def _admin(settings: Settings) -> tuple[AdminClient, ClientErrors]:
    errors = ClientErrors()
    config: dict[str, Any] = {
        **librdkafka_config(settings),
        "socket.timeout.ms": 5000,
        "error_cb": errors,
        "logger": _QUIET,  # a failure is reported in one line
    }
    return AdminClient(config), errors


async def missing_topics(settings: Settings, timeout: float = 5.0) -> list[str]:
    """The project's topics the broker does not have (InfrastructureUnavailableError when
    it cannot be asked)."""
    names = [spec.name for spec in project_topics(settings)]

    def ask() -> set[str]:
        admin, errors = _admin(settings)
        return _topic_names(admin, settings, errors, timeout)

    existing = await asyncio.to_thread(ask)
    return [name for name in names if name not in existing]


def _create_missing(settings: Settings, specs: list[TopicSpec], timeout: float) -> list[str]:
    admin, errors = _admin(settings)
    existing = _topic_names(admin, settings, errors, timeout)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=settings.topic_replication_factor,
                config=s.config,
            )
            for s in missing
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise InfrastructureUnavailableError(
                "kafka", f"could not create topic {name}: {exc}"
            ) from exc
    _wait_for_leaders(admin, created, timeout)
    return created


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Wait until every partition of the new topics has a leader (they are usable)."""
    deadline = time.monotonic() + timeout
    waiting = set(names)
    while waiting and time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        for name in list(waiting):
            meta = topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and meta.partitions
                and all(p.leader >= 0 and p.error is None for p in meta.partitions.values())
            ):
                waiting.discard(name)
        if waiting:
            time.sleep(0.1)


async def ensure_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 15.0
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    wanted = specs if specs is not None else project_topics(settings)
    created = await asyncio.to_thread(_create_missing, settings, wanted, timeout)
    if created:
        logger.info("created topics", extra={"topics": ", ".join(sorted(created))})
    return created
