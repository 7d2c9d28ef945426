"""``SA01_LOG_FORMAT=json``: a real worker writes every log record as one JSON object per
line (Faust's own handlers included), with the record's ids as fields."""

from __future__ import annotations

import json
import re
import time

import pytest

from sa01.core.settings import Settings
from tests.support.kafka import produce_raw
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration

TEXT_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\] \[\d+\] \[[A-Z]+\]")
"""The start of a log line in Faust's text format (``[date time] [pid] [LEVEL]``)."""


def json_records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_a_worker_logs_one_json_object_per_line_with_ids_as_fields(
    stack: Settings, workers: WorkerFactory
) -> None:
    settings = stack.model_copy(update={"log_format": "json"})
    worker = workers.start(settings)
    topic = settings.topic("conversation.inbound")
    produce_raw(settings, topic, [(b"tenant-1:session\n-1", b"not json at all")])

    deadline = time.monotonic() + 90
    dead: list[dict[str, object]] = []
    while not dead and time.monotonic() < deadline:
        text = worker.log_path.read_text(errors="replace")
        dead = [r for r in json_records(text) if r.get("message") == "dead-lettered a record"]
        if not dead:
            time.sleep(0.5)
    assert dead, worker.log_tail()

    [record] = dead
    assert str(record["position"]).startswith(f"{topic}:")
    assert record["level"] == "WARNING" and record["attempts"] == 1
    assert "dead-lettered" not in str(record["position"])
    text = worker.log_path.read_text(errors="replace")
    assert len(json_records(text)) > 5, "Faust's own records are JSON too"
    assert not [line for line in text.splitlines() if TEXT_RECORD.match(line)], text[-3000:]
    frozen = [r for r in json_records(text) if str(r.get("message")).startswith("start-up heap")]
    assert frozen and int(str(frozen[0]["objects"])) > 10_000, "the ready worker freezes its heap"
