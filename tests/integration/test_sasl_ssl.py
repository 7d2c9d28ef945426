"""The worker, the relay and the commands through the broker's SASL_SSL listener.

``scripts/services.sh`` starts the local broker with a SASL_SSL listener beside the
plaintext one (``SA01_KAFKA_SASL_PORT``, default 9094; TLS from a throwaway CA, SCRAM
users made by the storage tool) and writes its address, user, password and CA file to
``$SA01_STATE_DIR/credentials.env``. ``make test`` runs these tests as a phase of their
own (``-m sasl``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from sa01.core.settings import CREDENTIALS_FILE, Settings
from sa01.core.topics import ensure_topics
from sa01.outbox.migrate import migrate
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.fix_services import ROOT, ServiceEndpoints
from tests.fix_stack import make_settings
from tests.support.commands import command
from tests.support.kafka import consume, produce_raw
from tests.support.worker import WorkerFactory

pytestmark = [pytest.mark.integration, pytest.mark.sasl]


def sasl_listener() -> dict[str, str]:
    """The SASL_SSL listener's address, user, password and CA file, from services.sh."""
    path = Path(os.environ.get("SA01_STATE_DIR") or ROOT / ".run") / CREDENTIALS_FILE
    entries = (
        dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        if path.exists()
        else {}
    )
    needed = ("SA01_KAFKA_SASL_BOOTSTRAP", "SA01_KAFKA_SASL_USER", "SA01_KAFKA_SASL_PASSWORD")
    if not all(entries.get(key) for key in (*needed, "SA01_KAFKA_SASL_CAFILE")):
        raise RuntimeError(
            f"no SASL_SSL listener in {path}: the broker was not started by this checkout's "
            "scripts/services.sh (SA01_KAFKA_SASL_PORT, default 9094); restart it with "
            "`scripts/services.sh stop kafka && scripts/services.sh start kafka`"
        )
    return entries


@pytest.fixture
async def secure(services: ServiceEndpoints, test_id: str) -> Settings:
    """Settings of this test through SASL_SSL with SCRAM-SHA-512 (schema and topics made)."""
    listener = sasl_listener()
    settings = make_settings(
        services,
        test_id,
        kafka_bootstrap_servers=listener["SA01_KAFKA_SASL_BOOTSTRAP"],
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=listener["SA01_KAFKA_SASL_USER"],
        kafka_sasl_password=SecretStr(listener["SA01_KAFKA_SASL_PASSWORD"]),
        kafka_ssl_cafile=listener["SA01_KAFKA_SASL_CAFILE"],
        health_probes="postgres,kafka,redis",
    )
    await migrate(settings)
    await ensure_topics(settings)
    return settings


def wait_for(check: object, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


async def test_worker_relay_and_commands_work_through_sasl_ssl(
    secure: Settings, workers: WorkerFactory
) -> None:
    relay = workers.start_relay(secure)
    # The worker's own relay stays off: every reply goes out through the standalone one.
    worker = workers.start(secure.model_copy(update={"relay_enabled_in_worker": False}))
    on_worker = secure.model_copy(update={"web_port": worker.port})

    produced = command(secure, "produce", "--session", "s-sasl", "--text", "over TLS")
    produce_raw(secure, secure.topic("conversation.inbound"), [(b"t:s", b"not json")])
    [reply_record] = consume(secure, secure.topic("conversation.outbound"), 1, timeout=120)
    reply = decode_message(ConversationReply, reply_record.value)
    message_id = produced.stdout.split()[0]

    def kafka_healthy() -> bool:
        status = command(on_worker, "status", "--json")
        services = json.loads(status.stdout or "{}").get("services", {})
        return status.returncode == 0 and services.get("kafka", {}).get("state") == "healthy"

    wait_for(kafka_healthy)
    tail = command(secure, "tail", "--from-beginning", "--max", "1", "--json")

    def dead_lettered() -> bool:
        listed = command(secure, "dlq", "list", "--json")
        return listed.returncode == 0 and "conversation.inbound" in listed.stdout

    wait_for(dead_lettered)

    assert produced.returncode == 0, produced.stderr
    assert "1 acknowledged by Kafka" in produced.stderr
    assert reply.in_reply_to == message_id and reply.text.endswith("over TLS")
    assert tail.returncode == 0 and json.loads(tail.stdout.splitlines()[0])["service"]
    assert relay.alive, relay.log_tail()
    for process in (worker, relay):
        text = process.log_path.read_text(errors="replace")
        assert "authentication error" not in text.lower(), process.log_tail()


async def test_a_wrong_password_fails_in_one_line_naming_listener_and_mechanism(
    secure: Settings, workers: WorkerFactory
) -> None:
    wrong = secure.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
    listener = f"{secure.kafka_bootstrap_servers} (SASL_SSL, SCRAM-SHA-512, user "

    created = command(wrong, "create-topics")
    worker = workers.start(wrong, wait=False)
    worker.process.wait(timeout=120)
    worker.close_log()
    worker_log = worker.log_path.read_text(errors="replace")

    assert created.returncode == 1
    lines = [line for line in created.stderr.splitlines() if "refused the credentials" in line]
    assert len(lines) == 1, created.stderr
    assert listener in lines[0] and "SCRAM-SHA-512" in lines[0]
    assert "not-the-password" not in created.stderr + created.stdout
    assert worker.process.returncode == 1
    assert f"Kafka at {listener}" in worker_log and "refused the credentials" in worker_log
    assert "not-the-password" not in worker_log
