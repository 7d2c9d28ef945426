"""A worker deployment for the benches: the relay started first (as ``scripts/run.sh``
does), then ``faust -A streams worker``; optionally the loopback LLM server."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from bench.common import isolated_settings
from bench.load import Route
from bench.procs import FaustProc, Proc, free_port, python_proc, start_relay, start_worker
from sa01.core.settings import Settings

#: SomaBrain is not part of these measurements: memory off, no somabrain probe.
BENCH_DEFAULTS: dict[str, Any] = {
    "memory_enabled": False,
    "health_probes": "postgres,kafka,redis",
    "responder": "echo",
}


async def bench_settings(**overrides: Any) -> Settings:
    """Isolated (own schema, topics, app id), migrated settings with ``BENCH_DEFAULTS``."""
    return await isolated_settings(**{**BENCH_DEFAULTS, **overrides})


def route(settings: Settings) -> Route:
    """The inbound and outbound topics of ``settings``."""
    return Route(
        settings.kafka_bootstrap_servers,
        settings.topic("conversation.inbound"),
        settings.topic("conversation.outbound"),
    )


@contextlib.contextmanager
def bare_loop(settings: Settings) -> Iterator[Proc]:
    """``python -m bench.bare_loop`` on the deployment's topics (its own group), once it
    says ``ready``; stopped on exit."""
    r = route(settings)
    proc = python_proc(
        "bare-loop",
        ["-m", "bench.bare_loop", r.bootstrap, r.inbound, r.outbound, f"bare-{uuid.uuid4().hex}"],
    )
    try:
        proc.wait_ready_line()
        yield proc
    finally:
        proc.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def llm_server() -> Iterator[str]:
    """``python -m loopback.llm_server`` (OK, zero delay) in its own process; its API base."""
    port = free_port(26800)
    proc = python_proc(
        "llm", ["-m", "loopback.llm_server", "--port", str(port), "--log-level", "WARNING"]
    )
    try:
        proc.wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), 30, 0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop()


def with_llm(settings: Settings, api_base: str) -> Settings:
    """``settings`` answering through litellm (``openai/gpt-4o``) at ``api_base``."""
    return settings.model_copy(
        update={
            "responder": "litellm",
            "llm_model": "openai/gpt-4o",
            "llm_api_base": api_base,
            "openai_api_key": SecretStr("sk-bench"),
            "llm_timeout_seconds": 30.0,
        }
    )


def relay_active(relay: FaustProc) -> bool:
    """True when the standalone relay's /metrics says it holds the lock."""
    try:
        text = httpx.get(
            f"http://127.0.0.1:{relay.settings.relay_web_port}/metrics", timeout=1.0
        ).text
    except httpx.HTTPError:
        return False
    return "outbox_relay_active 1.0" in text


@contextlib.contextmanager
def relay_only(settings: Settings) -> Iterator[FaustProc]:
    """``faust -A streams publish-outbox``, once it holds the relay lock."""
    relay = start_relay(settings)
    try:
        relay.wait_until(lambda: relay_active(relay), 90, 0.05)
        yield relay
    finally:
        relay.stop()


@contextlib.contextmanager
def deployment(
    settings: Settings, *, standalone_relay: bool = True
) -> Iterator[tuple[FaustProc | None, FaustProc]]:
    """The active standalone relay (unless ``standalone_relay`` is false: then the
    worker's own relay publishes), then a worker ready on /health; both stopped on exit."""
    with workers_deployment(settings, 1, standalone_relay=standalone_relay) as (relay, workers):
        yield relay, workers[0]


def wait_group_stable(settings: Settings, members: int, timeout: float = 90.0) -> None:
    """Wait until the workers' consumer group is stable with ``members`` members, each
    holding partitions.

    ``/health`` says ready before the worker has joined its group: a second worker
    joining then makes the group rebalance a few seconds later (at the first worker's
    next heartbeat), in the middle of whatever is being measured.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers, "log_level": 3})
    deadline = time.monotonic() + timeout
    seen = "not described yet"
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(5)
        except KafkaException as exc:
            seen = str(exc)
        else:
            holding = [m for m in group.members if m.assignment.topic_partitions]
            if group.state == ConsumerGroupState.STABLE and len(holding) == members:
                return
            seen = f"{group.state.name}, {len(holding)} of {len(group.members)} members holding"
        time.sleep(0.1)
    raise RuntimeError(f"group {settings.app_id} not stable with {members} members: {seen}")


@contextlib.contextmanager
def workers_deployment(
    settings: Settings,
    count: int,
    *,
    standalone_relay: bool = True,
    roles: Sequence[str] | None = None,
) -> Iterator[tuple[FaustProc | None, list[FaustProc]]]:
    """As :func:`deployment`, with ``count`` workers in the consumer group (each with its
    own web port, data dir and instance id, and its ``SA01_WORKER_ROLE`` from ``roles``:
    all by default), all ready on /health."""
    if roles is not None and len(roles) != count:
        raise ValueError(f"{count} workers need {count} roles, not {len(roles)}")
    data_dir = tempfile.mkdtemp(prefix="sa01-bench-")
    try:
        with contextlib.ExitStack() as stack:
            relay = stack.enter_context(relay_only(settings)) if standalone_relay else None
            workers = []
            for n in range(1, count + 1):
                worker_dir = os.path.join(data_dir, f"w{n}")
                os.makedirs(worker_dir)
                worker = start_worker(
                    settings,
                    worker_dir,
                    worker_instance_id=f"{settings.app_id}-w{n}",
                    # Ten ports apart: workers started back to back bind theirs later.
                    web_port=free_port(26000 + 10 * n),
                    worker_role=roles[n - 1] if roles else "all",
                )
                stack.callback(worker.stop)
                workers.append(worker)
            for worker in workers:
                worker.wait_health_ready()
            wait_group_stable(settings, count)
            yield relay, workers
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
