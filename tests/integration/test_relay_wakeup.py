"""The active relay of another process is woken by a NOTIFY, not found by polling."""

from __future__ import annotations

import time

import httpx
import pytest

from sa01.core.settings import Settings
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import WorkerFactory, free_port

pytestmark = pytest.mark.integration


def relay_active(port: int) -> bool:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return False
    return "outbox_relay_active 1.0" in text


def test_a_standby_workers_commits_wake_the_standalone_relay_at_once(
    stack: Settings, workers: WorkerFactory
) -> None:
    # Polling every 60 s: a reply within the test's wait can only come from a wake-up.
    settings = stack.model_copy(
        update={"relay_poll_interval_seconds": 60.0, "health_probes": "postgres"}
    )
    port = free_port()
    relay = workers.start_relay(settings, metrics_port=port)
    deadline = time.monotonic() + 60
    while not relay_active(port):
        assert relay.alive, relay.log_tail()
        assert time.monotonic() < deadline, "the standalone relay never became active"
        time.sleep(0.2)
    workers.start(settings)  # its own relay waits as a hot standby

    sent = [inbound(f"wake {n}", session=f"w{n}") for n in range(5)]
    started = time.monotonic()
    produce_inbound(settings, sent)
    replies = consume(settings, settings.topic("conversation.outbound"), 5, timeout=40, settle=0)
    waited = time.monotonic() - started

    assert len(replies) == 5, f"{len(replies)} replies after {waited:.0f}s (polling is 60 s)"
