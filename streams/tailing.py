"""Reading topics outside the worker's agents: ``tail``, the fallback of ``status``, and the
degradation events a starting worker has not folded yet."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Literal

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from sa01.core.errors import InfrastructureUnavailableError, MessageDecodeError, PermanentError
from sa01.core.kafka_security import librdkafka_config
from sa01.core.settings import Settings
from sa01.core.topics import DEGRADATION_EVENTS
from sa01.resilience.health import DEFAULT_SERVICES, DegradationStatus, ServiceHealth, latest
from schemas.codec import decode_message
from schemas.messages import DegradationEvent
from streams.console import Console, dump_json, format_event

__all__ = ["Start", "fold_topic", "follow", "status_document"]


#: Where a reading consumer starts: a topic's first record, its end, or the offsets the
#: worker's consumer group committed (what the worker's agents have not processed yet).
Start = Literal["beginning", "end", "committed"]

_OFFSET_BEGINNING = -2
_OFFSET_END = -1


def _consumer(
    settings: Settings, topic: str, start: Start, *, report_eof: bool = False
) -> Consumer:
    # Reading from the group's committed offsets needs the group's id to fetch them; the
    # consumer only assigns partitions (it never joins the group) and never commits.
    group = settings.app_id if start == "committed" else f"sa01-tail-{uuid.uuid4()}"
    consumer = Consumer(
        {
            **librdkafka_config(settings),
            "group.id": group,
            "auto.offset.reset": "latest" if start == "end" else "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "socket.timeout.ms": 5000,
            "enable.partition.eof": report_eof,
            # Reading to the end: the broker must not hold the last, empty fetch of each
            # partition for 500 ms (the default) before the end is reported.
            **({"fetch.wait.max.ms": 10} if report_eof else {}),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=5)
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise InfrastructureUnavailableError("kafka", f"topic {topic} does not exist")
        offset = _OFFSET_END if start == "end" else _OFFSET_BEGINNING
        partitions = [TopicPartition(topic, p, offset) for p in meta.partitions]
        if start == "committed":
            # A partition the group never committed reads from its beginning.
            partitions = [
                tp if tp.offset >= 0 else TopicPartition(topic, tp.partition, _OFFSET_BEGINNING)
                for tp in consumer.committed(partitions, timeout=5)
            ]
        consumer.assign(partitions)
    except KafkaException as exc:
        consumer.close()
        raise InfrastructureUnavailableError(
            "kafka", f"Kafka at {settings.kafka_bootstrap_servers} is not reachable ({exc})"
        ) from exc
    except InfrastructureUnavailableError:
        consumer.close()
        raise
    return consumer


def _render(message: Message, topic: str, as_json: bool, console: Console) -> str:
    value = message.value()
    if topic.endswith(DEGRADATION_EVENTS):
        try:
            event = decode_message(DegradationEvent, value)
        except PermanentError as exc:
            return f"<undecodable record at offset {message.offset()}: {exc}>"
        return dump_json(event.model_dump(mode="json")) if as_json else format_event(event, console)
    key = (message.key() or b"").decode(errors="replace")
    text = (value or b"").decode(errors="replace")
    if as_json:
        return dump_json(
            {
                "key": key,
                "value": text,
                "partition": message.partition(),
                "offset": message.offset(),
            }
        )
    return f"{key} | {text}"


async def follow(
    settings: Settings,
    topic: str,
    *,
    as_json: bool,
    from_beginning: bool,
    max_records: int = 0,
    idle_exit: float = 0.0,
) -> int:
    """Print records of ``topic`` as they arrive; return how many were printed."""
    console = Console()
    start: Start = "beginning" if from_beginning else "end"
    consumer = await asyncio.to_thread(_consumer, settings, topic, start)
    printed = 0
    last_record = time.monotonic()
    try:
        while not max_records or printed < max_records:
            message = await asyncio.to_thread(consumer.poll, 0.5)
            if message is None or message.error():
                if idle_exit and time.monotonic() - last_record >= idle_exit:
                    break
                continue
            last_record = time.monotonic()
            console.line(_render(message, topic, as_json, console))
            printed += 1
    finally:
        await asyncio.to_thread(consumer.close)
    return printed


def fold_topic(
    settings: Settings, timeout: float = 20.0, *, start: Start = "beginning"
) -> dict[str, ServiceHealth]:
    """The health of every service the events announce, reading every partition from
    ``start`` to its end (not to a pause: a slow first fetch must not read as an empty
    topic). With ``start="committed"``, the events the worker's group has not folded
    into the service_health table yet."""
    topic = settings.topic(DEGRADATION_EVENTS)
    consumer = _consumer(settings, topic, start, report_eof=True)
    partitions = len(consumer.assignment())
    at_end: set[int] = set()
    folded: dict[str, ServiceHealth] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions and time.monotonic() < deadline:
            message = consumer.poll(0.3)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition() or 0)
                continue
            at_end.discard(message.partition() or 0)
            try:
                event = decode_message(DegradationEvent, message.value())
            except (MessageDecodeError, PermanentError):
                continue
            folded[event.service] = latest(
                folded.get(event.service), ServiceHealth.from_event(event)
            )
    finally:
        consumer.close()
    return folded


async def status_document(settings: Settings, url: str | None) -> tuple[dict[str, object], str]:
    """The worker's ``/status``, or the fold of degradation.events when it is not reachable."""
    base = url or f"http://{settings.web_host}:{settings.web_port}"
    try:
        async with httpx.AsyncClient(timeout=3.0) as client:
            response = await client.get(f"{base}/status")
        if response.status_code == 200:
            answer: object = response.json()
            if isinstance(answer, dict):
                return answer, f"from the worker at {base}"
            reason = "answered 200 without a JSON object"
        else:
            reason = f"answered {response.status_code}"
    except httpx.HTTPError as exc:
        reason = f"is not reachable ({type(exc).__name__})"
    rows = await asyncio.to_thread(fold_topic, settings)
    specs = {spec.name: spec for spec in DEFAULT_SERVICES}
    document = DegradationStatus(rows, specs).as_json()
    return document, f"from {settings.topic(DEGRADATION_EVENTS)}: the worker at {base} {reason}"
