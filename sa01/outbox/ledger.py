"""The outbox ledger: which relay batch was the last one Kafka committed, and its rows.

Every relay transaction carries one ledger record (key: the relay's transactional
id, value: ``{"seq": N, "ids": [[first, last], ...]}``) on a compacted one-partition
topic. ``ids`` are the outbox row ids (inclusive ranges) of batch N and of batch N - 1:
the relay settles a batch's rows in PostgreSQL only after its commit, concurrently with
the next batch, so at a crash at most those two batches are committed and unsettled.
After ``init_transactions`` has resolved any transaction left open by a crashed
predecessor, the last ledger record of our id read with ``read_committed`` names the
last committed batch and the rows to settle; any other row is still to publish.
Records of the earlier protocol (``{"seq": N}``, rows marked ``publishing`` with their
batch sequence) read as an entry without ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sa01.core.errors import InfrastructureUnavailableError
from sa01.core.kafka_security import librdkafka_config
from sa01.core.logging import librdkafka_logger
from sa01.core.settings import Settings

__all__ = ["IdRange", "LedgerEntry", "encode_entry", "id_ranges", "read_last_entry"]

IdRange = tuple[int, int]
"""Outbox row ids ``first`` to ``last``, both included."""


@dataclass(frozen=True)
class LedgerEntry:
    """The last committed batch of a relay id, and the rows its record names."""

    seq: int
    ids: tuple[IdRange, ...] = ()


def id_ranges(ids: Iterable[int]) -> list[IdRange]:
    """``ids`` as sorted inclusive ranges of consecutive ids (a batch is mostly one)."""
    ordered = sorted(ids)
    if not ordered:
        return []
    ranges: list[IdRange] = []
    first = last = ordered[0]
    for row_id in ordered:
        if row_id > last + 1:
            ranges.append((first, last))
            first = row_id
        last = max(last, row_id)
    ranges.append((first, last))
    return ranges


def encode_entry(seq: int, ids: Sequence[IdRange] = ()) -> bytes:
    """The value of a ledger record for batch ``seq`` naming the rows ``ids``."""
    return json.dumps({"seq": seq, "ids": [list(r) for r in ids]}).encode()


def decode_entry(value: bytes) -> LedgerEntry:
    """A ledger record's value (either protocol)."""
    entry = json.loads(value)
    ids = tuple((int(first), int(last)) for first, last in entry.get("ids", ()))
    return LedgerEntry(int(entry["seq"]), ids)


def _read_blocking(settings: Settings, topic: str, relay_id: str, timeout: float) -> LedgerEntry:
    consumer = Consumer(
        {
            **librdkafka_config(settings),
            "group.id": f"sa01-ledger-reader-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # The end of the partition is only reported by an empty fetch: do not let the
            # broker hold it for the default 500 ms waiting for data.
            "fetch.wait.max.ms": 10,
            "socket.timeout.ms": 10_000,
            "logger": librdkafka_logger(),
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
        _close(consumer, topic)


#: How long closing the reader waits for its group coordinator's connection.
CLOSE_WAIT_SECONDS = 2.0


def _close(consumer: Consumer, topic: str) -> None:
    """Close once the group coordinator's connection is up. The reader joins no group, but
    librdkafka connects to the coordinator of its ``group.id`` all the same; closed in the
    middle of that connection's SASL handshake, it logs an "SASL authentication error"
    (a read this quick ends well before the handshake does). Asking the coordinator for
    the committed offsets waits for the connection; it answers at once."""
    with contextlib.suppress(KafkaException):
        consumer.committed([TopicPartition(topic, 0)], timeout=CLOSE_WAIT_SECONDS)
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


def _read_last(consumer: Consumer, topic: str, key: bytes, timeout: float) -> LedgerEntry:
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
    window = 64
    while True:
        start = max(low, high - window)
        last = _scan(consumer, topic, start, key, timeout)
        if last is not None or start <= low:
            return last or LedgerEntry(0)
        window *= 8


def _scan(
    consumer: Consumer, topic: str, start: int, key: bytes, timeout: float
) -> LedgerEntry | None:
    consumer.assign([TopicPartition(topic, 0, start)])
    last: LedgerEntry | None = None
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
            last = decode_entry(message.value() or b"{}")


async def read_last_entry(
    settings: Settings, topic: str, relay_id: str, timeout: float = 15.0
) -> LedgerEntry:
    """The last batch committed by ``relay_id`` (sequence 0 and no rows when none)."""
    return await asyncio.to_thread(_read_blocking, settings, topic, relay_id, timeout)
