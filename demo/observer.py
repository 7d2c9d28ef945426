"""What the demo watches and how it sends.

* :class:`TopicReader` reads ``conversation.outbound``, ``degradation.events`` and
  ``upload.retry`` from the beginning (read_committed, like any client) on a thread that
  survives broker restarts.
* :class:`Backlog` counts outbox rows, pending memories and dead letters in the demo's schema.
* :class:`Sender` sends user messages like ``faust -A streams produce``: with the resilient
  producer (confluent-kafka), which keeps them in the outbox when Kafka does not answer.
  An :class:`Outgoing` may be a voice message or carry an upload.
* :func:`count_uploads` compares the uploads sent with what the primary store holds.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from loopback import fake_audio
from sa01.core.errors import PermanentError
from sa01.core.kafka_security import librdkafka_config
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import (
    CONVERSATION_INBOUND,
    CONVERSATION_OUTBOUND,
    DEGRADATION_EVENTS,
    UPLOAD_RETRY,
)
from sa01.outbox.database import Database
from sa01.outbox.pending_memory import PendingMemoryStore
from sa01.outbox.producer import DeliveryPath, ResilientProducer
from sa01.outbox.store import OutboxStore
from sa01.pipeline.records import message_record
from schemas.codec import decode_message
from schemas.messages import (
    Attachment,
    ConversationInbound,
    ConversationReply,
    DegradationEvent,
    UploadTask,
)

__all__ = [
    "TENANT",
    "Backlog",
    "Outgoing",
    "SeenReply",
    "Sender",
    "SentMessage",
    "TopicReader",
    "UploadCount",
    "count_uploads",
    "upload",
    "voice_note",
]

#: The tenant of every message the demo sends (and the first part of its storage keys).
TENANT = "demo-tenant"

_quiet = logging.getLogger("demo.kafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass(frozen=True)
class SeenReply:
    """A reply read from ``conversation.outbound``."""

    reply: ConversationReply
    partition: int
    offset: int
    seen_at: float


@dataclass(frozen=True)
class Outgoing:
    """A message to send: text, or a voice message, or text with uploads."""

    session: str
    text: str = ""
    voice: bool = False
    attachments: tuple[Attachment, ...] = ()
    spoken: str = ""
    """For a voice message: what the user said (the recording's content)."""


def voice_note(session: str, spoken: str, *, client_text: str = "") -> Outgoing:
    """A voice message saying ``spoken``: a fake recording sent inline (``audio/mpeg``);
    ``client_text`` is the transcript the client made itself (empty: none)."""
    audio = fake_audio(spoken, provider="microphone")
    recording = Attachment(
        attachment_id="recording",
        content_type="audio/mpeg",
        size_bytes=len(audio),
        storage_key=f"voice-in/{uuid.uuid4().hex}.mp3",
        content_base64=base64.b64encode(audio).decode(),
    )
    return Outgoing(session, client_text, voice=True, attachments=(recording,), spoken=spoken)


def upload(session: str, text: str, name: str, data: bytes) -> Outgoing:
    """A message with one file uploaded inline, named ``files/<name>``: the worker stores it
    under ``<tenant>/uploads/files/<name>``."""
    attachment = Attachment(
        attachment_id=name,
        content_type="application/octet-stream",
        size_bytes=len(data),
        storage_key=f"files/{name}",
        content_base64=base64.b64encode(data).decode(),
    )
    return Outgoing(session, text, attachments=(attachment,))


@dataclass(frozen=True)
class UploadCount:
    """Uploads sent against what the primary store holds."""

    sent: int
    stored: int
    """In the primary store with every byte sent."""
    lost: int
    """Not in the primary store, or not with the bytes sent."""
    duplicated: int
    """Tasks published on ``upload.retry`` more than once for one upload."""
    queued: int
    """Uploads with a task on ``upload.retry``."""
    temporary_left: int
    """Copies still in a temporary store."""


def count_uploads(
    sent: Mapping[str, bytes],
    stored: Mapping[str, bytes],
    tasks: Mapping[str, int],
    temporary: int,
) -> UploadCount:
    """Compare ``sent`` (storage key to bytes) with ``stored`` (the primary's objects) and
    the ``upload.retry`` tasks published (by storage key)."""
    kept = sum(1 for key, data in sent.items() if stored.get(key) == data)
    return UploadCount(
        sent=len(sent),
        stored=kept,
        lost=len(sent) - kept,
        duplicated=sum(max(0, tasks.get(key, 0) - 1) for key in sent),
        queued=sum(1 for key in sent if tasks.get(key, 0)),
        temporary_left=temporary,
    )


@dataclass(frozen=True)
class SentMessage:
    """A message the demo sent, and how it was made durable."""

    message: ConversationInbound
    scenario: str
    path: DeliveryPath
    sent_at: float


class TopicReader:
    """Reads replies and degradation events on a background thread; thread-safe accessors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.outbound = settings.topic(CONVERSATION_OUTBOUND)
        self.events_topic = settings.topic(DEGRADATION_EVENTS)
        self.uploads_topic = settings.topic(UPLOAD_RETRY)
        self._lock = threading.Lock()
        self._upload_tasks: Counter[str] = Counter()
        self._replies: list[SeenReply] = []
        self._events: list[DegradationEvent] = []
        self._new_replies: list[SeenReply] = []
        self._new_events: list[DegradationEvent] = []
        self.undecodable = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def start(self) -> None:
        """Assign every partition of both topics from the beginning and start reading."""
        consumer = Consumer(
            {
                **librdkafka_config(self.settings),
                "group.id": f"{self.settings.app_id}-demo-reader-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "socket.timeout.ms": 5000,
                "reconnect.backoff.max.ms": 1000,
            },
            logger=_quiet,
        )
        assignment: list[TopicPartition] = []
        try:
            for topic in (self.outbound, self.events_topic, self.uploads_topic):
                meta = consumer.list_topics(topic, timeout=10).topics[topic]
                assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        except (KafkaException, KeyError):
            consumer.close()
            raise
        consumer.assign(assignment)
        self._consumer = consumer
        self._thread = threading.Thread(target=self._run, name="demo-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is None or message.error():
                    continue
                self._take(
                    message.topic() or "",
                    message.partition() or 0,
                    message.offset() or 0,
                    message.value(),
                )
        finally:
            consumer.close()

    def _take(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        try:
            if topic == self.outbound:
                seen = SeenReply(
                    decode_message(ConversationReply, value or b""),
                    partition,
                    offset,
                    time.monotonic(),
                )
                with self._lock:
                    self._replies.append(seen)
                    self._new_replies.append(seen)
            elif topic == self.uploads_topic:
                task = decode_message(UploadTask, value or b"")
                with self._lock:
                    self._upload_tasks[task.storage_key] += 1
            else:
                event = decode_message(DegradationEvent, value or b"")
                with self._lock:
                    self._events.append(event)
                    self._new_events.append(event)
        except PermanentError:
            with self._lock:
                self.undecodable += 1

    def take_new(self) -> tuple[list[SeenReply], list[DegradationEvent]]:
        """Replies and events read since the last call."""
        with self._lock:
            replies, self._new_replies = self._new_replies, []
            events, self._new_events = self._new_events, []
        return replies, events

    @property
    def replies(self) -> list[SeenReply]:
        """Every reply read so far, in the order read."""
        with self._lock:
            return list(self._replies)

    @property
    def events(self) -> list[DegradationEvent]:
        """Every degradation event read so far, in the order read."""
        with self._lock:
            return list(self._events)

    def upload_tasks(self) -> Counter[str]:
        """How many tasks ``upload.retry`` carried for each storage key."""
        with self._lock:
            return Counter(self._upload_tasks)

    def answered(self) -> set[str]:
        """The ids of the messages that have at least one reply."""
        with self._lock:
            return {seen.reply.in_reply_to for seen in self._replies}


class Backlog:
    """Counts in the demo's schema: outbox rows to publish, memories to sync, dead letters."""

    def __init__(self, settings: Settings) -> None:
        self.database = Database(settings, max_size=2)
        self._outbox = OutboxStore()
        self._memories = PendingMemoryStore()

    async def open(self) -> None:
        """Open the pool."""
        await self.database.open(wait=True)

    async def close(self) -> None:
        """Close the pool."""
        await self.database.close()

    async def outbox(self) -> int:
        """Outbox rows not yet published."""
        async with self.database.connection() as conn:
            count, _ = await self._outbox.pending_count(conn)
        return count

    async def pending_memories(self) -> int:
        """Memories waiting in ``pending_memory``."""
        async with self.database.connection() as conn:
            return await self._memories.unsynced_count(conn)

    async def dead_letters(self) -> int:
        """Rows of ``dead_letter_message``."""
        async with self.database.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM dead_letter_message")
            row = await cur.fetchone()
        count = row[0] if row else 0
        return count if isinstance(count, int) else 0


class Sender:
    """Sends user messages to ``conversation.inbound`` through the resilient producer."""

    def __init__(self, settings: Settings, database: Database) -> None:
        # Shorter waits than a worker's: while the broker is down, fall back to the
        # outbox after one 2 s attempt and retry Kafka every few seconds.
        self.settings = settings.model_copy(
            update={
                "producer_send_timeout_seconds": 2.0,
                "producer_circuit_failures": 1,
                "producer_circuit_open_seconds": 3.0,
            }
        )
        self.topic = settings.topic(CONVERSATION_INBOUND)
        self.producer = ResilientProducer(self.settings, database, Metrics())
        self.sent: list[SentMessage] = []

    async def start(self) -> None:
        """Create the producer."""
        await self.producer.start()

    async def stop(self) -> None:
        """Flush and stop the producer."""
        await self.producer.stop()

    async def send(self, scenario: str, outgoing: Outgoing) -> SentMessage:
        """Send one message; returns once Kafka or the outbox holds it."""
        message = ConversationInbound(
            message_id=str(uuid.uuid4()),
            tenant_id=TENANT,
            session_id=outgoing.session,
            agent_id="demo-agent",
            text=outgoing.text,
            created_at=datetime.now(UTC),
            voice=outgoing.voice,
            attachments=outgoing.attachments,
        )
        result = await self.producer.send(
            message_record(self.topic, message.partition_key, message, message.message_id)
        )
        sent = SentMessage(message, scenario, result.path, time.monotonic())
        self.sent.append(sent)
        return sent
