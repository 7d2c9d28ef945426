"""Fuzzing every topic the worker reads with 10,000 hypothesis-generated records (issue 12).

Records go to ``conversation.inbound``, ``somabrain.memory.remember``, ``upload.retry``,
``backup.tasks`` and ``degradation.events`` of one running worker. Every record ends
handled or dead-lettered exactly once: a record that does not decode is in its topic's
``.dlq`` once (by its source position), a valid conversation message is answered once
and never dead-lettered, no record is dead-lettered twice, the consumer group commits
every partition to its end (nothing acked past a failure, no partition stuck), and the
worker is alive and ready at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from pydantic import BaseModel

from core.errors import PermanentError
from core.settings import Settings
from loopback import SomaBrainServer
from schemas.codec import decode_message
from schemas.messages import (
    BackupTask,
    ConversationInbound,
    ConversationReply,
    DegradationEvent,
    MemoryRecord,
    UploadTask,
)
from tests.support.hostile import generate
from tests.support.kafka import consume
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration

#: Records per topic: 10,000 in all.
PER_TOPIC = {
    "conversation.inbound": (ConversationInbound, "conversation", 4000),
    "somabrain.memory.remember": (MemoryRecord, "memory", 1500),
    "upload.retry": (UploadTask, "upload", 1500),
    "backup.tasks": (BackupTask, "backup", 1500),
    "degradation.events": (DegradationEvent, "degradation", 1500),
}

Position = tuple[int, int]


def produce_positions(
    settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]
) -> list[Position]:
    """Produce in order; the (partition, offset) of each record, in the same order."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    positions: list[Position | None] = [None] * len(records)
    errors: list[KafkaError] = []

    def delivered(index: int) -> object:
        def report(err: KafkaError | None, message: object) -> None:
            if err is not None:
                errors.append(err)
            else:
                positions[index] = (message.partition(), message.offset())  # type: ignore[attr-defined]

        return report

    for index, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered(index))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    assert all(p is not None for p in positions)
    return [p for p in positions if p is not None]


def committed_behind(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Per topic: records between the group's committed offsets and the partitions' ends."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.app_id,
            "enable.auto.commit": False,
        }
    )
    try:
        behind: dict[str, int] = {}
        for topic in topics:
            parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
            committed = consumer.committed(parts, timeout=10)
            lag = 0
            for tp in committed:
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                lag += high - max(tp.offset, 0)
            behind[topic] = lag
        return behind
    finally:
        consumer.close()


def decodes(model: type[BaseModel], value: bytes | None) -> bool:
    try:
        decode_message(model, value)
    except PermanentError:
        return False
    return True


@pytest.mark.timeout(900)
def test_ten_thousand_hostile_records_each_end_handled_or_dead_lettered_once(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer, tmp_path: Path
) -> None:
    settings = stack.model_copy(
        update={
            "somabrain_url": somabrain.base_url,
            "storage_chain": "local",
            "storage_local_root": str(tmp_path / "storage"),
            "backup_store": "local",
            "backup_local_root": str(tmp_path / "backup"),
            "upload_max_attempts": 2,
            "upload_retry_backoff_seconds": 0.05,
            "health_probes": "postgres",
        }
    )
    worker = workers.start(settings)
    sent: dict[str, list[tuple[Position, bytes | None]]] = {}
    for name, (_, kind, count) in PER_TOPIC.items():
        records = generate(kind, count)
        positions = produce_positions(settings, settings.topic(name), records)
        sent[name] = [(pos, value) for pos, (_, value) in zip(positions, records, strict=True)]
    topics = [settings.topic(name) for name in PER_TOPIC]

    deadline = time.monotonic() + 600
    behind = committed_behind(settings, topics)
    while any(behind.values()) and time.monotonic() < deadline and worker.alive:
        time.sleep(2)
        behind = committed_behind(settings, topics)
    assert worker.alive, worker.log_tail()
    assert not any(behind.values()), f"records not acked: {behind}"

    health = httpx.get(f"http://127.0.0.1:{worker.port}/health", timeout=5).json()
    assert health.get("ready") is True

    invalid_by_topic = {
        name: {pos for pos, value in sent[name] if not decodes(model, value)}
        for name, (model, _, _) in PER_TOPIC.items()
    }
    answerable = len(sent["conversation.inbound"]) - len(invalid_by_topic["conversation.inbound"])
    replies = [
        decode_message(ConversationReply, r.value)
        for r in consume(settings, settings.topic("conversation.outbound"), answerable, timeout=120)
    ]
    replied = Counter(r.in_reply_to for r in replies)
    for name, (model, _, _) in PER_TOPIC.items():
        invalid = invalid_by_topic[name]
        dead = consume(settings, settings.topic(f"{name}.dlq"), len(invalid), timeout=120)
        dead_positions = Counter(
            (
                int(r.headers["__streams.errors.partition"]),
                int(r.headers["__streams.errors.offset"]),
            )
            for r in dead
        )
        assert not [p for p, n in dead_positions.items() if n > 1], f"{name}: dead-lettered twice"
        missing = invalid - set(dead_positions)
        assert not missing, f"{name}: {len(missing)} undecodable records not dead-lettered"
        if model is ConversationInbound:
            valid = [
                decode_message(ConversationInbound, value)
                for pos, value in sent[name]
                if pos not in invalid
            ]
            assert all(replied[m.message_id] == 1 for m in valid), "a valid message not answered"
            assert not {pos for pos, _ in sent[name] if pos not in invalid} & set(dead_positions)
        print(
            f"\n{name}: {len(sent[name])} records, {len(invalid)} undecodable, "
            f"{len(dead_positions)} dead-lettered"
        )
