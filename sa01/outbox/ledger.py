"""The outbox ledger: which relay batch was the last one Kafka committed.

Every relay transaction carries one ledger record (key: the relay's transactional
id, value: ``{"seq": N}``) on a compacted one-partition topic. After
``init_transactions`` has resolved any transaction left open by a crashed
predecessor, the last ledger record of our id read with ``read_committed`` names
the last committed batch: rows claimed with a higher sequence were never visible.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sa01.core.errors import InfrastructureUnavailableError
from sa01.core.kafka_security import librdkafka_config
from sa01.core.settings import Settings

__all__ = ["encode_entry", "read_last_sequence"]


def encode_entry(seq: int) -> bytes:
    """The value of a ledger record for batch ``seq``."""
    return json.dumps({"seq": seq}).encode()


def _read_blocking(settings: Settings, topic: str, relay_id: str, timeout: float) -> int:
    consumer = Consumer(
        {
            **librdkafka_config(settings),
            "group.id": f"sa01-ledger-reader-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "socket.timeout.ms": 10_000,
        }
    )
    key = relay_id.encode()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return _read_last(consumer, topic, key, timeout)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not _retriable(error) or time.monotonic() >= deadline:
                    raise InfrastructureUnavailableError(
                        "kafka", f"could not read the outbox ledger: {error}"
                    ) from exc
                time.sleep(0.2)
    finally:
        consumer.close()


def _retriable(error: KafkaError) -> bool:
    return bool(error.retriable()) or error.code() in (
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    )


def _read_last(consumer: Consumer, topic: str, key: bytes, timeout: float) -> int:
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
    window = 64
    while True:
        start = max(low, high - window)
        last = _scan(consumer, topic, start, key, timeout)
        if last is not None or start <= low:
            return last or 0
        window *= 8


def _scan(consumer: Consumer, topic: str, start: int, key: bytes, timeout: float) -> int | None:
    consumer.assign([TopicPartition(topic, 0, start)])
    last: int | None = None
    while True:
        message = consumer.poll(timeout)
        if message is None:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "ledger read timed out"))
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return last
            raise KafkaException(error)
        if message.key() == key and message.value():
            last = int(json.loads(message.value() or b"{}")["seq"])


async def read_last_sequence(
    settings: Settings, topic: str, relay_id: str, timeout: float = 15.0
) -> int:
    """The highest batch sequence committed by ``relay_id`` (0 when none)."""
    return await asyncio.to_thread(_read_blocking, settings, topic, relay_id, timeout)
