"""``status``, ``tail`` and kcat on degradation.events, as an operator uses them."""

from __future__ import annotations

import json
import subprocess

import pytest

from core.settings import Settings
from tests.support.status import wait_status
from tests.support.worker import FAUST, ROOT, WorkerFactory, settings_env

pytestmark = pytest.mark.integration

CONTRACT_FIELDS = {
    "event_id",
    "service",
    "state",
    "previous_state",
    "circuit",
    "reason",
    "latency_ms",
    "observed_at",
    "source",
    "schema_version",
}


def command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.update(settings_env(settings))
    return subprocess.run(
        [FAUST, "-A", "streams", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
async def monitored(stack: Settings, workers: WorkerFactory) -> Settings:
    settings = stack.model_copy(
        update={"somabrain_url": "http://127.0.0.1:9", "health_probes": "postgres,somabrain"}
    )
    worker = workers.start(settings)
    # Wait for the table: the event is then on the topic, not only in this worker's view.
    wait_status(worker, lambda doc: doc.get("table", {}).get("somabrain") == "unavailable")
    return settings.model_copy(update={"web_port": worker.port})


async def test_kcat_shows_degradation_events_as_json_with_the_contract_fields(
    monitored: Settings,
) -> None:
    out = subprocess.run(
        [
            "kcat",
            "-C",
            "-b",
            monitored.kafka_bootstrap_servers,
            "-t",
            monitored.topic("degradation.events"),
            "-e",
            "-q",
            "-X",
            "isolation.level=read_committed",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]

    assert events, "no degradation event on the topic"
    for event in events:
        assert set(event) == CONTRACT_FIELDS
    assert {"service": "somabrain", "state": "unavailable"}.items() <= next(
        e for e in events if e["service"] == "somabrain"
    ).items()


async def test_status_prints_a_plain_table_when_piped_and_json_on_request(
    monitored: Settings,
) -> None:
    table = command(monitored, "status")
    as_json = command(monitored, "status", "--json")

    assert table.returncode == 0, table.stderr
    assert "SERVICE" in table.stdout and "overall:" in table.stdout
    assert "\033[" not in table.stdout, "colour codes in piped output"
    assert "somabrain" in table.stdout and "unavailable" in table.stdout
    document = json.loads(as_json.stdout)
    assert document["services"]["somabrain"]["state"] == "unavailable"


async def test_status_falls_back_to_the_topic_and_says_so_when_the_worker_is_down(
    monitored: Settings, workers: WorkerFactory
) -> None:
    workers.kill_all()

    result = command(monitored, "status")

    assert result.returncode == 0, result.stderr
    assert "is not reachable" in result.stdout
    assert "somabrain" in result.stdout and "unavailable" in result.stdout


async def test_tail_prints_one_line_per_event_and_json_lines_with_json(
    monitored: Settings,
) -> None:
    lines = command(monitored, "tail", "--from-beginning", "--idle-exit", "3")
    json_lines = command(monitored, "tail", "--from-beginning", "--max", "2", "--json")

    assert lines.returncode == 0, lines.stderr
    readable = [line for line in lines.stdout.splitlines() if line.split()[2:3] == ["somabrain"]]
    assert len(readable) == 1 and "unknown -> unavailable" in readable[0]
    parsed = [json.loads(line) for line in json_lines.stdout.splitlines()]
    assert len(parsed) == 2
    assert all(set(event) == CONTRACT_FIELDS for event in parsed)


async def test_commands_say_clearly_when_kafka_is_not_reachable(stack: Settings) -> None:
    nowhere = stack.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})

    result = command(nowhere, "tail", "--max", "1")

    assert result.returncode == 1
    assert "Kafka at 127.0.0.1:1 is not reachable" in result.stderr
