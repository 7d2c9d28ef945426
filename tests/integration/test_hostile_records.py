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

import os
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from pydantic import BaseModel

from loopback import SomaBrainServer
from sa01.core.errors import PermanentError
from sa01.core.settings import Settings
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

#: ``FUZZ_SCALE=0.1`` runs a tenth of the records (to reproduce a failure quickly).
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
#: Records per topic: 10,000 in all.
PER_TOPIC = {
    "conversation.inbound": (ConversationInbound, "conversation", int(4000 * SCALE)),
    "somabrain.memory.remember": (MemoryRecord, "memory", int(1500 * SCALE)),
    "upload.retry": (UploadTask, "upload", int(1500 * SCALE)),
    "backup.tasks": (BackupTask, "backup", int(1500 * SCALE)),
    "degradation.events": (DegradationEvent, "degradation", int(1500 * SCALE)),
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


def record_ends(settings: Settings, topic: str) -> dict[int, int]:
    """Per partition: the offset after its last record. A partition written in Kafka
    transactions ends with a commit marker, which is no record: its high watermark is
    one past this, and a consumer group rightly commits only this far."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"fuzz-ends-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        ends: dict[int, int] = {}
        highs = {}
        for p in range(settings.topic_partitions):
            _, highs[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in highs if highs[p] > 0])
        waiting = {p for p, high in highs.items() if high > 0}
        deadline = time.monotonic() + 60
        while waiting and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                for p in list(waiting):
                    position = consumer.position([TopicPartition(topic, p)])[0].offset
                    if position >= highs[p]:
                        waiting.discard(p)
                continue
            if message.error():
                continue
            ends[message.partition()] = message.offset() + 1
        return ends
    finally:
        consumer.close()


def committed_behind(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Per topic: records after the group's committed offsets."""
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
            ends = record_ends(settings, topic)
            parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
            committed = consumer.committed(parts, timeout=10)
            behind[topic] = sum(
                max(0, ends.get(tp.partition, 0) - max(tp.offset, 0)) for tp in committed
            )
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

    deadline = time.monotonic() + 600 * max(SCALE, 0.2)
    behind = committed_behind(settings, topics)
    while any(behind.values()) and time.monotonic() < deadline and worker.alive:
        time.sleep(5)
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
