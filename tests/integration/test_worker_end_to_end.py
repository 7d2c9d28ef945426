"""The worker on the real broker and database: answers, order, dead letters, duplicates."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict

import pytest
from pydantic import SecretStr

from loopback import FailureMode, LLMServer
from sa01.core.settings import Settings
from schemas.codec import decode_message, encode_message
from schemas.messages import ConversationInbound, ConversationReply
from tests.support.kafka import Record, consume, inbound, produce_inbound, produce_raw
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration


def with_llm(settings: Settings, server: LLMServer, **extra: object) -> Settings:
    """Settings whose responder calls ``server`` through litellm."""
    return settings.model_copy(
        update={
            "responder": "litellm",
            "llm_model": "openai/gpt-4o",
            "llm_api_base": server.openai_base_url,
            "openai_api_key": SecretStr("sk-test"),
            # Generous: correctness tests must not depend on this machine's speed.
            "llm_timeout_seconds": 30.0,
            **extra,
        }
    )


def replies(records: list[Record]) -> list[ConversationReply]:
    return [decode_message(ConversationReply, r.value) for r in records]


def outbound(settings: Settings, count: int, **kwargs: float) -> list[ConversationReply]:
    return replies(consume(settings, settings.topic("conversation.outbound"), count, **kwargs))


async def test_message_produced_with_confluent_kafka_is_answered_through_litellm(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    settings = with_llm(stack, llm_server)
    workers.start(settings)
    message = inbound("What is the capital of France?")
    produce_inbound(settings, [message])

    [reply] = outbound(settings, 1)

    assert reply.in_reply_to == message.message_id
    assert reply.text == "[primary] What is the capital of France?"
    assert reply.model == "gpt-4o"
    assert (reply.tenant_id, reply.session_id) == (message.tenant_id, message.session_id)
    assert llm_server.request_count == 1


async def test_message_produced_with_kcat_is_answered(
    stack: Settings, workers: WorkerFactory
) -> None:
    workers.start(stack)
    message = inbound("sent by kcat")
    subprocess.run(
        [
            "kcat",
            "-P",
            "-b",
            stack.kafka_bootstrap_servers,
            "-t",
            stack.topic("conversation.inbound"),
            "-K",
            "|",
        ],
        input=message.partition_key.encode() + b"|" + encode_message(message) + b"\n",
        check=True,
        timeout=30,
    )

    [reply] = outbound(stack, 1)

    assert reply.in_reply_to == message.message_id
    assert reply.text == "echo: sent by kcat"


async def test_thousand_messages_over_fifty_sessions_are_answered_once_each_in_session_order(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    settings = with_llm(stack, llm_server)
    workers.start(settings)
    sent = [inbound(f"message {n}", session=f"session-{n % 50}") for n in range(1000)]
    produce_inbound(settings, sent)

    received = outbound(settings, 1000, timeout=180)

    answered = [r.in_reply_to for r in received]
    assert len(answered) == 1000, f"{len(answered)} replies for 1000 messages"
    assert len(set(answered)) == 1000, "some message was answered twice"
    assert set(answered) == {m.message_id for m in sent}
    sent_order: dict[str, list[str]] = defaultdict(list)
    for m in sent:
        sent_order[m.session_id].append(m.message_id)
    reply_order: dict[str, list[str]] = defaultdict(list)
    for r in received:
        reply_order[r.session_id].append(r.in_reply_to)
    assert reply_order == sent_order


async def test_each_poison_kind_is_dead_lettered_with_headers_while_good_messages_are_answered(
    stack: Settings, workers: WorkerFactory
) -> None:
    worker = workers.start(stack)
    key = b"tenant-a:s1"
    good = [inbound(f"good {n}") for n in range(3)]
    wrong_version = json.loads(encode_message(inbound("v2")))
    wrong_version["schema_version"] = 2
    poison: list[tuple[bytes, str]] = [
        (b"this is not json", "sa01.core.errors.MessageDecodeError"),
        (b"\xff\xfe\x00not utf-8", "sa01.core.errors.MessageDecodeError"),
        (b'{"message_id": 42}', "sa01.core.errors.MessageValidationError"),
        (b"[1, 2, 3]", "sa01.core.errors.MessageValidationError"),
        (json.dumps(wrong_version).encode(), "sa01.core.errors.MessageValidationError"),
    ]
    topic = stack.topic("conversation.inbound")
    records: list[tuple[bytes | None, bytes]] = [(key, encode_message(good[0]))]
    for value, _ in poison:
        records.append((key, value))
    records += [(key, encode_message(m)) for m in good[1:]]
    produce_raw(stack, topic, records)

    dead = consume(stack, stack.topic("conversation.inbound.dlq"), len(poison))
    answered = outbound(stack, len(good))

    assert [r.in_reply_to for r in answered] == [m.message_id for m in good]
    assert [r.value for r in dead] == [value for value, _ in poison]
    for record, (_, error_class) in zip(dead, poison, strict=True):
        assert record.key == key
        assert record.headers["__streams.errors.exception"] == error_class
        assert record.headers["__streams.errors.topic"] == topic
        assert record.headers["__streams.errors.offset"].isdigit()
        assert record.headers["__streams.errors.partition"].isdigit()
        assert "Traceback" in record.headers["__streams.errors.stacktrace"]
        assert record.headers["__streams.errors.message"]
        assert record.headers["dlq.attempts"] == "1"
        assert record.headers["dlq.failed-at"]
    assert worker.alive, "the worker must not stop on bad input"


async def test_processing_that_keeps_failing_is_dead_lettered_after_bounded_retries(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    settings = with_llm(
        stack, llm_server, processing_retry_backoff_seconds=0.05, llm_degraded_reply=False
    )
    llm_server.set_mode(FailureMode.ERROR_500)
    workers.start(settings)
    failing = inbound("the provider fails for this one", session="s-fail")
    produce_inbound(settings, [failing])

    [dead] = consume(settings, settings.topic("conversation.inbound.dlq"), 1)
    llm_server.set_mode(FailureMode.OK)
    later = inbound("the provider is back", session="s-fail")
    produce_inbound(settings, [later])
    [reply] = outbound(settings, 1)

    assert decode_message(ConversationInbound, dead.value) == failing
    assert dead.headers["dlq.attempts"] == str(settings.processing_max_attempts)
    assert dead.headers["__streams.errors.exception"] == "sa01.core.errors.FallbackExhaustedError"
    assert "ServiceUnavailableError" in dead.headers["__streams.errors.stacktrace"]
    assert reply.in_reply_to == later.message_id
    assert llm_server.request_count == settings.processing_max_attempts + 1


async def test_a_request_the_model_refuses_is_answered_with_a_notice_without_retries(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    settings = with_llm(stack, llm_server)
    llm_server.set_mode(FailureMode.BAD_REQUEST)
    workers.start(settings)
    produce_inbound(settings, [inbound("far too long")])

    [reply] = outbound(settings, 1)

    assert reply.notices == ("Message too long: please shorten it",)
    assert reply.degraded == ()
    assert llm_server.request_count == 1
    assert consume(settings, settings.topic("conversation.inbound.dlq"), 1, timeout=2) == []


async def test_a_duplicated_message_id_is_answered_once(
    stack: Settings, workers: WorkerFactory
) -> None:
    workers.start(stack)
    message = inbound("say it once")
    produce_inbound(stack, [message, message])
    outbound(stack, 1)
    sentinel = inbound("processed after the third copy, same session")
    produce_inbound(stack, [message, sentinel])

    received = outbound(stack, 2)

    assert [r.in_reply_to for r in received] == [message.message_id, sentinel.message_id]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_input_is_answered_and_does_not_crash_the_consumer(
    stack: Settings, workers: WorkerFactory, codec: str
) -> None:
    from confluent_kafka import Producer

    worker = workers.start(stack)
    message = inbound(f"compressed with {codec}")
    producer = Producer(
        {"bootstrap.servers": stack.kafka_bootstrap_servers, "compression.type": codec}
    )
    producer.produce(
        stack.topic("conversation.inbound"),
        key=message.partition_key.encode(),
        value=encode_message(message),
    )
    assert producer.flush(30) == 0

    [reply] = outbound(stack, 1)

    assert reply.in_reply_to == message.message_id
    assert worker.alive


async def test_an_open_llm_circuit_is_not_called_and_shows_in_metrics_and_status(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    from tests.support.status import state_of, wait_status

    settings = with_llm(
        stack,
        llm_server,
        llm_breaker_consecutive_failures=2,
        llm_breaker_wait_seconds=600.0,
        processing_retry_backoff_seconds=0.05,
        llm_degraded_reply=False,
        health_probes="postgres",
    )
    llm_server.set_mode(FailureMode.ERROR_500)
    worker = workers.start(settings)
    produce_inbound(settings, [inbound("the model is down")])

    [dead] = consume(settings, settings.topic("conversation.inbound.dlq"), 1)
    status, _ = wait_status(worker, state_of("llm", "unavailable"))
    metrics = worker.get("/metrics").text

    assert llm_server.request_count == 2, "the open circuit let a call through"
    assert dead.headers["dlq.attempts"] == str(settings.processing_max_attempts)
    assert status["services"]["llm"]["circuit"] == "open"
    assert 'circuit_breaker_state{name="llm:openai/gpt-4o"} 1.0' in metrics
    assert 'circuit_breaker_calls_total{name="llm:openai/gpt-4o",outcome="rejected"}' in metrics
