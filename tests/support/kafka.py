"""Kafka clients for tests: produce inbound messages, read what arrived (read_committed)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from sa01.core.kafka_security import librdkafka_config
from sa01.core.settings import Settings
from schemas.codec import encode_message
from schemas.messages import ConversationInbound


@dataclass(frozen=True)
class Record:
    """A record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    timestamp: float = 0.0
    """The record's timestamp (producer's create time), in seconds since the epoch."""


def inbound(
    text: str, *, session: str = "s1", tenant: str = "tenant-a", message_id: str | None = None
) -> ConversationInbound:
    """A valid inbound message."""
    return ConversationInbound(
        message_id=message_id or str(uuid.uuid4()),
        tenant_id=tenant,
        session_id=session,
        agent_id="agent-1",
        text=text,
        created_at=datetime.now(UTC),
    )


def produce_raw(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Produce ``(key, value)`` records with an idempotent producer; wait for every ack."""
    producer = Producer(
        {
            **librdkafka_config(settings),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": settings.kafka_max_message_bytes + 65_536,
        }
    )
    errors: list[KafkaError] = []
    for key, value in records:
        while True:
            try:
                producer.produce(
                    topic,
                    key=key,
                    value=value,
                    on_delivery=lambda err, _m: errors.append(err) if err else None,
                )
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0, "producer did not flush"
    assert not errors, errors


def produce_inbound(settings: Settings, messages: list[ConversationInbound]) -> None:
    """Produce inbound messages keyed ``tenant:session``."""
    produce_raw(
        settings,
        settings.topic("conversation.inbound"),
        [(m.partition_key.encode(), encode_message(m)) for m in messages],
    )


def consume(
    settings: Settings,
    topic: str,
    count: int,
    *,
    timeout: float = 90.0,
    settle: float = 2.0,
    until: Callable[[list[Record]], bool] | None = None,
) -> list[Record]:
    """Read ``topic`` from the start until ``count`` records arrived (and ``until`` holds,
    when given), then ``settle`` seconds more to catch any extra (duplicate) record;
    read_committed."""
    consumer = Consumer(
        {
            **librdkafka_config(settings),
            "group.id": f"test-reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = list(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while True:
            now = time.monotonic()
            if settle_until is None and len(records) >= count and (until is None or until(records)):
                settle_until = now + settle
            if settle_until is not None and now >= settle_until:
                break
            if now >= deadline:
                break
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            records.append(
                Record(
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    key=message.key(),
                    value=message.value(),
                    headers={k: (v or b"").decode() for k, v in (message.headers() or [])},
                    timestamp=message.timestamp()[1] / 1000,
                )
            )
    finally:
        consumer.close()
    return records


def produce_transactional(
    settings: Settings,
    topic: str,
    records: list[tuple[bytes | None, bytes]],
    per_transaction: int = 10,
    partition: int | None = None,
) -> None:
    """Produce ``records`` in transactions of ``per_transaction``, as the relay does:
    every transaction leaves a control record (an offset gap) on each partition it wrote.
    With ``partition``, every record goes there (else the key chooses)."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "transactional.id": f"test-{uuid.uuid4().hex}",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    for start in range(0, len(records), per_transaction):
        producer.begin_transaction()
        for key, value in records[start : start + per_transaction]:
            if partition is None:
                producer.produce(topic, key=key, value=value)
            else:
                producer.produce(topic, key=key, value=value, partition=partition)
        producer.commit_transaction(60)


def group_progress(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition: (offset committed by the worker's group, high watermark)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.app_id,
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        committed = consumer.committed(partitions, timeout=10)
        progress = {}
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            progress[tp.partition] = (max(tp.offset, 0), high)
        return progress
    finally:
        consumer.close()


def wait_committed_to_end(
    settings: Settings, topic: str, *, transactional: bool = False, timeout: float = 120
) -> None:
    """Wait until the group committed every partition of ``topic`` to its last record.

    After transactional writes the high watermark sits one past the last control
    record, which no consumer ever acks: one offset short of it is the end.
    """
    slack = 1 if transactional else 0
    deadline = time.monotonic() + timeout
    progress = group_progress(settings, topic)
    while time.monotonic() < deadline:
        progress = group_progress(settings, topic)
        if all(committed >= high - slack for committed, high in progress.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"{topic}: committed offsets stopped short: {progress}")
