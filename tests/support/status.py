"""Reading a worker's /status and the degradation.events topic in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import DegradationEvent
from tests.support.kafka import consume
from tests.support.worker import WorkerProcess


def wait_status(
    worker: WorkerProcess, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0
) -> tuple[dict[str, Any], float]:
    """Poll ``/status`` until ``predicate`` holds; return the document and seconds waited."""
    started = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        try:
            response = worker.get("/status")
            if response.status_code == 200:
                last = response.json()
                if predicate(last):
                    return last, time.monotonic() - started
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"/status never satisfied the condition; last: {last}")


def state_of(service: str, state: str) -> Callable[[dict[str, Any]], bool]:
    """Predicate: ``service`` is in ``state`` in a /status document."""
    return lambda doc: doc.get("services", {}).get(service, {}).get("state") == state


def degradation_events(
    settings: Settings,
    count: int,
    *,
    timeout: float = 60.0,
    settle: float = 3.0,
    until: Callable[[list[DegradationEvent]], bool] | None = None,
) -> list[DegradationEvent]:
    """Read degradation.events from the start (read_committed): at least ``count`` events
    and, when given, until ``until`` holds for those read, then ``settle`` seconds more."""
    records = consume(
        settings,
        settings.topic("degradation.events"),
        count,
        timeout=timeout,
        settle=settle,
        until=None if until is None else (lambda rs: until([_event(r.value) for r in rs])),
    )
    return [_event(r.value) for r in records]


def _event(value: bytes | None) -> DegradationEvent:
    return decode_message(DegradationEvent, value)


def transitions(events: list[DegradationEvent], service: str) -> list[str]:
    """The sequence of states announced for ``service``."""
    return [e.state.value for e in events if e.service == service]
