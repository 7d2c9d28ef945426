"""Every internal consumer is total: poison goes to ``<topic>.dlq``, the partition commits on.

For the memory, upload, backup and degradation agents: each poison kind is written
between good records on one key (so on one partition); each poison must arrive in the
topic's ``.dlq`` with the KIP-1034 headers, the group's committed offset must reach
the partition's end (past every poison and the good record after them), and the
worker must still run. The unexpected-exception path of the shared guard is shown
on real PostgreSQL with a handler that raises.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from loopback import FailureMode, SomaBrainServer
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.pipeline.consuming import RecordGuard
from sa01.pipeline.dead_lettering import DeadLetterWriter, InboundMessage
from schemas.codec import encode_message
from schemas.messages import BackupTask, DegradationEvent, MemoryRecord, ServiceState, UploadTask
from tests.support.kafka import Record, consume, produce_raw, wait_committed_to_end
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration

DECODE = "sa01.core.errors.MessageDecodeError"
VALIDATION = "sa01.core.errors.MessageValidationError"
# A NUL byte in an identifier: PostgreSQL refuses it (psycopg.DataError), or the schema
# does once identifiers forbid control characters.
NUL_REFUSED = {"psycopg.DataError", VALIDATION}

UNDECODABLE = b"\xff\xfe\x00 not utf-8"
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
WRONG_SCHEMA = b'{"memory_id": 42, "task_id": 42, "upload_id": 42, "service": 42}'
COMMON_POISON: list[tuple[bytes, set[str]]] = [
    (UNDECODABLE, {DECODE}),
    (DEEP_JSON, {DECODE}),  # "value is JSON nested too deeply to read"
    (WRONG_SCHEMA, {VALIDATION}),
]


def memory(n: int, *, tenant: str = "tenant-p") -> MemoryRecord:
    return MemoryRecord(
        memory_id=f"m-{uuid.uuid4()}",
        tenant_id=tenant,
        agent_id="agent-1",
        session_id="s1",
        content=f"memory {n}",
    )


def upload(n: int, **changes: object) -> UploadTask:
    task = UploadTask(
        upload_id=f"u-{n}",
        tenant_id="tenant-p",
        message_id=f"msg-{n}",
        storage_key=f"tenant-p/uploads/u-{n}.bin",
        content_type="application/octet-stream",
        size_bytes=5,
        content_base64=base64.b64encode(b"bytes").decode(),
    )
    return task.model_copy(update=changes)


def check_dead_letters(
    settings: Settings, topic: str, key: bytes, poison: list[tuple[bytes, set[str]]]
) -> list[Record]:
    dead = consume(settings, f"{topic}.dlq", len(poison), timeout=120)
    assert sorted(r.value or b"" for r in dead) == sorted(value for value, _ in poison)
    by_value = {r.value: r for r in dead}
    for value, classes in poison:
        record = by_value[value]
        assert record.key == key
        assert record.headers["__streams.errors.exception"] in classes, record.headers
        assert record.headers["__streams.errors.topic"] == topic
        assert record.headers["__streams.errors.partition"].isdigit()
        assert record.headers["__streams.errors.offset"].isdigit()
        assert record.headers["__streams.errors.message"]
        assert int(record.headers["dlq.attempts"]) >= 1
    return dead


def run_poison(
    settings: Settings,
    workers: WorkerFactory,
    topic_name: str,
    key: bytes,
    goods: list[bytes],
    poison: list[tuple[bytes, set[str]]],
    *,
    transactional: bool = False,
) -> None:
    worker = workers.start(settings)
    topic = settings.topic(topic_name)
    records = [(key, goods[0])] + [(key, value) for value, _ in poison]
    records += [(key, value) for value in goods[1:]]
    produce_raw(settings, topic, records)
    check_dead_letters(settings, topic, key, poison)
    wait_committed_to_end(settings, topic, transactional=transactional)
    assert worker.alive, "the worker must not stop on bad input"


def with_somabrain(settings: Settings, server: SomaBrainServer) -> Settings:
    return settings.model_copy(
        update={"somabrain_url": server.base_url, "health_probes": "postgres,somabrain"}
    )


def wait_for_memories(server: SomaBrainServer, tenant: str, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = server.memories(tenant)
        if len(stored) >= count:
            return [m.key for m in stored]
        time.sleep(0.2)
    raise AssertionError(f"{len(server.memories(tenant))} memories of {count} stored")


async def test_memory_agent_dead_letters_each_poison_kind_and_keeps_committing(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    settings = with_somabrain(stack, somabrain)
    key = b"tenant-p:agent-1"
    goods = [memory(n) for n in range(3)]
    nul = json.loads(encode_message(memory(99)))
    nul["tenant_id"] = "ten\x00ant"
    poison = [*COMMON_POISON, (json.dumps(nul).encode(), NUL_REFUSED)]
    run_poison(
        settings,
        workers,
        "somabrain.memory.remember",
        key,
        [encode_message(m) for m in goods],
        poison,
    )
    assert wait_for_memories(somabrain, "tenant-p", 3) == [m.memory_id for m in goods]


async def test_memory_agent_dead_letters_a_memory_somabrain_rejects(
    stack: Settings, workers: WorkerFactory, somabrain: SomaBrainServer
) -> None:
    settings = with_somabrain(stack, somabrain)
    worker = workers.start(settings)
    topic = settings.topic("somabrain.memory.remember")
    key = b"tenant-p:agent-1"
    rejected = memory(1)
    somabrain.set_mode(FailureMode.BAD_REQUEST)
    produce_raw(settings, topic, [(key, encode_message(rejected))])
    check_dead_letters(
        settings,
        topic,
        key,
        [(encode_message(rejected), {"sa01.providers.somabrain.SomaBrainRequestError"})],
    )
    somabrain.set_mode(FailureMode.OK)
    accepted = memory(2)
    produce_raw(settings, topic, [(key, encode_message(accepted))])
    assert wait_for_memories(somabrain, "tenant-p", 1) == [accepted.memory_id]
    wait_committed_to_end(settings, topic)
    assert worker.alive


def storage_settings(stack: Settings, tmp_path: Path) -> Settings:
    return stack.model_copy(
        update={
            "storage_chain": "local",
            "storage_local_root": str(tmp_path / "storage"),
            "backup_store": "local",
            "backup_local_root": str(tmp_path / "backup"),
            "health_probes": "postgres",
            "upload_retry_backoff_seconds": 0.1,
            "processing_retry_backoff_seconds": 0.05,
        }
    )


async def test_upload_agent_dead_letters_each_poison_kind_and_keeps_committing(
    stack: Settings, workers: WorkerFactory, tmp_path: Path
) -> None:
    settings = storage_settings(stack, tmp_path)
    key = b"tenant-p-upload"
    goods = [encode_message(upload(n)) for n in range(3)]
    bad_base64 = json.loads(encode_message(upload(90)))
    bad_base64["content_base64"] = "not base64!!"
    nul_key = json.loads(encode_message(upload(91)))
    nul_key["storage_key"] = "tenant-p/uploads/a\x00b"
    unknown_store = encode_message(upload(92, content_base64=None, held_in="nowhere"))
    poison = [
        *COMMON_POISON,
        (json.dumps(bad_base64).encode(), {VALIDATION}),
        (json.dumps(nul_key).encode(), {VALIDATION}),
        # An error of no kind the upload path expects: retried, then dead-lettered.
        (unknown_store, {"sa01.core.errors.ConfigurationError"}),
    ]
    run_poison(settings, workers, "upload.retry", key, goods, poison)
    stored = {p.name for p in (tmp_path / "storage" / "tenant-p" / "uploads").iterdir()}
    assert stored == {"u-0.bin", "u-1.bin", "u-2.bin"}
    dead = consume(settings, settings.topic("upload.retry.dlq"), len(poison), timeout=10)
    attempts = {r.value: r.headers["dlq.attempts"] for r in dead}
    assert attempts[unknown_store] == str(settings.processing_max_attempts)


async def test_backup_agent_dead_letters_each_poison_kind_and_keeps_committing(
    stack: Settings, workers: WorkerFactory, tmp_path: Path
) -> None:
    settings = storage_settings(stack, tmp_path)
    key = b"backup-task"
    goods = [
        encode_message(
            BackupTask(task_id=f"b-{n}", tenant_id="tenant-p", storage_keys=(f"uploads/x-{n}.bin",))
        )
        for n in range(3)
    ]
    nul_key = json.loads(goods[0])
    nul_key["task_id"] = "b-nul"
    nul_key["storage_keys"] = ["uploads/a\x00b"]
    poison = [*COMMON_POISON, (json.dumps(nul_key).encode(), {VALIDATION})]
    run_poison(settings, workers, "backup.tasks", key, goods, poison)


async def test_degradation_agent_dead_letters_each_poison_kind_and_keeps_committing(
    stack: Settings, workers: WorkerFactory
) -> None:
    settings = stack.model_copy(update={"health_probes": "postgres"})
    key = b"poisoned-service"
    goods = [
        encode_message(DegradationEvent(service="poisoned-service", state=state))
        for state in (ServiceState.DEGRADED, ServiceState.HEALTHY)
    ]
    # The worker's own health events reach this topic through the transactional relay.
    run_poison(
        settings, workers, "degradation.events", key, goods, COMMON_POISON, transactional=True
    )


async def test_the_guard_retries_an_unexpected_error_a_bounded_number_of_times_then_dead_letters(
    stack: Settings,
) -> None:
    settings = stack.model_copy(
        update={"processing_max_attempts": 4, "processing_retry_backoff_seconds": 0.01}
    )
    metrics = Metrics()
    calls = 0

    async def broken(message: InboundMessage) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    message = InboundMessage("t.memory", 0, 7, b"k", b"{}")
    async with Database(settings) as database:
        guard = RecordGuard(
            "memory", settings, DeadLetterWriter(settings, database, metrics), metrics
        )
        assert await guard.run(message, broken) == "dead_lettered"
    assert calls == 4
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cur = await conn.execute(
            f"SELECT topic, headers->>'__streams.errors.exception', headers->>'dlq.attempts'"
            f" FROM {settings.database_schema}.outbox_message WHERE idempotency_key = %s",
            ("dlq:t.memory:0:7",),
        )
        assert await cur.fetchall() == [("t.memory.dlq", "builtins.RuntimeError", "4")]
