"""``status``, ``tail`` and kcat on degradation.events, as an operator uses them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import psycopg
import pytest

from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.dead_letter_store import DeadLetter, DeadLetterStore
from streams.tailing import fold_topic
from tests.support.commands import command
from tests.support.status import wait_status
from tests.support.worker import WorkerFactory

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


@pytest.fixture
async def monitored(stack: Settings, workers: WorkerFactory) -> Settings:
    settings = stack.model_copy(
        update={"somabrain_url": "http://127.0.0.1:9", "health_probes": "postgres,somabrain"}
    )
    worker = workers.start(settings)
    wait_status(worker, lambda doc: doc.get("table", {}).get("somabrain") == "unavailable")
    # The table reads uncommitted records: wait until the relay's transaction holding the
    # event is committed too (a kill before that would leave it invisible to status's
    # read_committed fold until the broker aborts the transaction).
    deadline = time.monotonic() + 60
    while True:
        folded = await asyncio.to_thread(fold_topic, settings)
        if "somabrain" in folded and folded["somabrain"].state.value == "unavailable":
            break
        assert time.monotonic() < deadline, f"no committed somabrain event: {folded}"
        await asyncio.sleep(0.2)
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


#: Dead letters by age in days (created_at is moved back after the insert).
AGES = {"forty-days": 40.0, "thirty-five-days": 35.0, "ten-days": 10.0, "one-hour": 1 / 24}


@pytest.fixture
async def aged_dead_letters(stack: Settings) -> dict[str, int]:
    """One dead letter per entry of AGES, ``name -> id``."""
    ids: dict[str, int] = {}
    store = DeadLetterStore()
    async with Database(stack) as database, database.connection() as conn:
        for name, days in AGES.items():
            await store.add(
                conn,
                DeadLetter(
                    idempotency_key=f"agent:{name}",
                    source="agent",
                    topic=stack.topic("conversation.inbound"),
                    payload=name.encode(),
                    error_class="sa01.core.errors.MessageDecodeError",
                    error_message=f"{name} is not JSON",
                    attempts=1,
                ),
            )
            cur = await conn.execute(
                "UPDATE dead_letter_message SET created_at = now() - %s * interval '1 day'"
                " WHERE idempotency_key = %s RETURNING id",
                (days, f"agent:{name}"),
            )
            row = await cur.fetchone()
            assert row is not None
            ids[name] = int(row[0])
    return ids


async def remaining(settings: Settings) -> set[str]:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        cur = await conn.execute("SELECT payload FROM dead_letter_message")
        return {bytes(row[0]).decode() for row in await cur.fetchall()}


async def test_dlq_purge_older_than_deletes_only_dead_letters_past_the_retention(
    stack: Settings, aged_dead_letters: dict[str, int]
) -> None:
    dry_run = command(stack, "dlq", "purge", "--older-than", "30d", "--dry-run")
    assert (dry_run.returncode, dry_run.stdout.strip()) == (0, "would purge 2 dead letter(s)")
    assert await remaining(stack) == set(AGES)

    purged = command(stack, "dlq", "purge", "--older-than", "30d")

    assert (purged.returncode, purged.stdout.strip()) == (0, "purged 2 dead letter(s)")
    assert await remaining(stack) == {"ten-days", "one-hour"}


async def test_dlq_since_still_means_newer_than_and_combines_with_older_than(
    stack: Settings, aged_dead_letters: dict[str, int]
) -> None:
    newer = command(stack, "dlq", "list", "--since", "30d", "--json")
    between = command(stack, "dlq", "list", "--since", "36d", "--older-than", "1d", "--json")
    older = command(stack, "dlq", "list", "--older-than", "2w", "--json")

    def listed(result: subprocess.CompletedProcess[str]) -> list[int]:
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["id"] for line in result.stdout.splitlines()]

    ids = aged_dead_letters
    assert listed(newer) == [ids["ten-days"], ids["one-hour"]]
    assert listed(between) == [ids["thirty-five-days"], ids["ten-days"]]
    assert listed(older) == [ids["forty-days"], ids["thirty-five-days"]]


async def test_dlq_purge_without_a_filter_is_refused_unless_all_is_given(
    stack: Settings, aged_dead_letters: dict[str, int]
) -> None:
    refused = command(stack, "dlq", "purge")
    refused_dry_run = command(stack, "dlq", "purge", "--dry-run")

    for result in (refused, refused_dry_run):
        assert result.returncode == 1
        assert "would delete every dead letter: add --all" in result.stderr
    assert await remaining(stack) == set(AGES)

    every = command(stack, "dlq", "purge", "--all")

    assert (every.returncode, every.stdout.strip()) == (0, "purged 4 dead letter(s)")
    assert await remaining(stack) == set()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--older-than", "30x"), "--older-than '30x': expected a duration"),
        (("--since", "soon"), "--since 'soon': expected a duration"),
        (("--since", "1d", "--older-than", "30d"), "selects nothing"),
    ],
)
async def test_dlq_says_clearly_what_is_wrong_with_a_duration(
    stack: Settings, aged_dead_letters: dict[str, int], args: tuple[str, ...], message: str
) -> None:
    result = command(stack, "dlq", "purge", *args)

    assert result.returncode == 1
    assert message in result.stderr
    assert await remaining(stack) == set(AGES)
