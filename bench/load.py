"""Load for the worker benches: inbound messages in, replies timed as they become visible.

The same harness drives the worker and the bare baseline: a confluent-kafka producer
sends ``ConversationInbound`` messages keyed ``tenant:session``, and a read_committed
consumer (a thread) notes when each reply appears, matched by ``in_reply_to`` (the
worker) or ``message_id`` (the baseline echoes the inbound record).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from schemas.codec import encode_message
from schemas.messages import ConversationInbound

TEXT_CHARS = 100
SESSIONS = 100


@dataclass(frozen=True)
class Route:
    """Where the load goes in and where its replies come out."""

    bootstrap: str
    inbound: str
    outbound: str


@dataclass
class Batch:
    """Encoded inbound messages, ready to send."""

    ids: list[str]
    records: list[tuple[bytes, bytes]]

    @property
    def size_bytes(self) -> int:
        """Mean encoded value size."""
        return sum(len(v) for _, v in self.records) // max(1, len(self.records))


def messages(count: int, *, sessions: int = SESSIONS, tag: str = "b") -> Batch:
    """``count`` inbound messages of ``TEXT_CHARS`` characters over ``sessions`` sessions."""
    batch = Batch([], [])
    now = datetime.now(UTC)
    for n in range(count):
        message = ConversationInbound(
            message_id=f"{tag}-{uuid.uuid4().hex}",
            tenant_id="bench",
            session_id=f"s{n % sessions}",
            agent_id="agent-1",
            text=f"message {n} ".ljust(TEXT_CHARS, "x"),
            created_at=now,
        )
        batch.ids.append(message.message_id)
        batch.records.append((message.partition_key.encode(), encode_message(message)))
    return batch


def producer(bootstrap: str, linger_ms: int = 1) -> Producer:
    """An idempotent acks=all producer."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "log_level": 3,  # errors only: retries while a new topic settles are normal
        }
    )


def _send(prod: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            prod.produce(topic, key=key, value=value)
            return
        except BufferError:
            prod.poll(0.01)


def _reply_id(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        document = json.loads(value)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    found = document.get("in_reply_to") or document.get("message_id")
    return str(found) if found else None


def _end_offset(consumer: Consumer, topic: str, partition: int) -> int:
    """The partition's high watermark, retried while a new topic's leader settles."""
    deadline = time.monotonic() + 60
    while True:
        try:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            return int(high)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass
class ReplyWatcher:
    """Reads the outbound topic from its current end (read_committed) in a thread."""

    route: Route
    seen: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0
    _expected: set[str] = field(default_factory=set)
    _all_seen: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ReplyWatcher:
        consumer = Consumer(
            {
                "bootstrap.servers": self.route.bootstrap,
                "group.id": f"bench-watch-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 50,
                "log_level": 3,
            }
        )
        topic = self.route.outbound
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        starts = []
        for p in partitions:
            starts.append(TopicPartition(topic, p, _end_offset(consumer, topic, p)))
        consumer.assign(starts)
        self._thread = threading.Thread(target=self._run, args=(consumer,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.05)
                if message is None or message.error():
                    continue
                now = time.perf_counter()
                reply_to = _reply_id(message.value())
                if reply_to is None:
                    continue
                with self._lock:
                    if reply_to in self.seen:
                        self.duplicates += 1
                        continue
                    self.seen[reply_to] = now
                    self._expected.discard(reply_to)
                    if not self._expected:
                        self._all_seen.set()
        finally:
            consumer.close()

    def expect(self, ids: list[str]) -> None:
        """Wait for replies to ``ids`` from now on (see :meth:`wait`)."""
        with self._lock:
            self._expected = {i for i in ids if i not in self.seen}
            if self._expected:
                self._all_seen.clear()
            else:
                self._all_seen.set()

    def wait(self, timeout: float) -> None:
        """Block until every expected reply arrived; raise after ``timeout`` seconds."""
        if not self._all_seen.wait(timeout):
            with self._lock:
                missing = len(self._expected)
            raise RuntimeError(f"{missing} replies missing after {timeout:.0f}s")


def round_trip(
    route: Route, prod: Producer, watcher: ReplyWatcher, batch: Batch, timeout: float
) -> float:
    """Send ``batch`` at once; seconds from the first send to the last reply seen."""
    watcher.expect(batch.ids)
    started = time.perf_counter()
    for key, value in batch.records:
        _send(prod, route.inbound, key, value)
    prod.flush(60)
    watcher.wait(timeout)
    return max(watcher.seen[i] for i in batch.ids) - started


def paced(
    route: Route,
    prod: Producer,
    watcher: ReplyWatcher,
    batch: Batch,
    rate: float,
    timeout: float,
) -> list[float]:
    """Send ``batch`` at ``rate`` messages/s; each message's latency in milliseconds
    (send call to its reply seen by the read_committed consumer)."""
    watcher.expect(batch.ids)
    sent: dict[str, float] = {}
    started = time.perf_counter()
    for n, (message_id, (key, value)) in enumerate(zip(batch.ids, batch.records, strict=True)):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[message_id] = time.perf_counter()
        _send(prod, route.inbound, key, value)
        prod.poll(0)
    prod.flush(60)
    watcher.wait(timeout)
    return [(watcher.seen[i] - sent[i]) * 1000 for i in batch.ids]
