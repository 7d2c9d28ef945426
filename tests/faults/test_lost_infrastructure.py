"""Lost infrastructure state is loud, never a busy loop: a dropped schema or a deleted
topic under a running worker stops it with one clear error and exit code 3, and SIGTERM
always stops a worker within its bound (issue 12)."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from psycopg import sql

from sa01.core.settings import Settings
from streams.app import EXIT_FATAL, EXIT_STOP_TIMEOUT
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import WorkerFactory, WorkerProcess

pytestmark = pytest.mark.faults


def wait_for_exit(worker: WorkerProcess, timeout: float = 90.0) -> tuple[int, float]:
    """The worker's exit code and how long it took to exit."""
    started = time.monotonic()
    try:
        code = worker.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within {timeout:.0f}s:\n{worker.log_tail()}")
    worker.close_log()
    return int(code), time.monotonic() - started


async def test_a_dropped_schema_stops_the_worker_with_one_clear_error(
    stack: Settings, workers: WorkerFactory
) -> None:
    worker = workers.start(stack)
    produce_inbound(stack, [inbound("before")])
    assert len(consume(stack, stack.topic("conversation.outbound"), 1)) == 1

    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(stack.database_schema))
        )
    produce_inbound(stack, [inbound(f"after {n}", session=f"s{n}") for n in range(50)])

    code, _ = wait_for_exit(worker)
    log = worker.log_path.read_text(errors="replace")
    assert code == EXIT_FATAL, worker.log_tail()
    assert log.count("the worker stops:") == 1
    assert "run `faust -A streams migrate`" in log
    assert "unexpected error processing" not in log  # no message was failed for it


async def test_a_deleted_topic_stops_the_worker_with_one_clear_error(
    stack: Settings, workers: WorkerFactory
) -> None:
    settings = stack.model_copy(update={"topic_check_interval_seconds": 1.0})
    worker = workers.start(settings)
    topic = settings.topic("degradation.events")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()

    code, _ = wait_for_exit(worker)
    log = worker.log_path.read_text(errors="replace")
    assert code == EXIT_FATAL, worker.log_tail()
    assert log.count("the worker stops:") == 1
    assert f"{topic}" in log and "faust -A streams create-topics" in log


async def test_sigterm_stops_the_worker_within_its_bound(
    stack: Settings, workers: WorkerFactory
) -> None:
    # A bound far below what a clean stop takes: the bound, not the stop, ends it.
    worker = workers.start(stack.model_copy(update={"shutdown_timeout_seconds": 0.05}))
    worker.process.send_signal(15)

    code, took = wait_for_exit(worker, timeout=30)

    assert code == EXIT_STOP_TIMEOUT, worker.log_tail()
    assert "did not stop within 0.05 s" in worker.log_path.read_text(errors="replace")
    print(f"\nexit after SIGTERM: {took:.2f}s (bound 0.05 s)")
