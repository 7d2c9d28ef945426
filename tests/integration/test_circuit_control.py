"""Forcing a worker's circuits from outside: ``/circuits`` and ``faust -A streams circuit``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from loopback import LLMServer
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import FAUST, ROOT, WorkerFactory, WorkerProcess, free_port, settings_env

pytestmark = pytest.mark.integration

PRIMARY = "openai/gpt-4o"
FALLBACK = "anthropic/claude-3-5-sonnet-latest"
CIRCUIT = f"llm:{PRIMARY}"
TOKEN = "circuit-control-test-token"


def circuit_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.update(settings_env(settings))
    return subprocess.run(
        [FAUST, "-A", "streams", "circuit", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Chat:
    """Sends one message at a time and returns its reply."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent = 0

    def ask(self, text: str) -> ConversationReply:
        message = inbound(text, session="s-circuits")
        produce_inbound(self.settings, [message])
        self.sent += 1
        records = consume(
            self.settings, self.settings.topic("conversation.outbound"), self.sent, timeout=120
        )
        replies = [decode_message(ConversationReply, r.value) for r in records]
        mine = [r for r in replies if r.in_reply_to == message.message_id]
        assert len(mine) == 1, f"{len(mine)} replies to {text!r}"
        return mine[0]


@pytest.fixture
def chained(
    stack: Settings, llm_server: LLMServer, fallback_llm_server: LLMServer, tmp_path: Path
) -> Settings:
    path = tmp_path / "chains.toml"
    path.write_text(
        f"""
[chains]
chat = ["{PRIMARY}", "{FALLBACK}"]

[models."{PRIMARY}"]
api_base = "{llm_server.openai_base_url}"

[models."{FALLBACK}"]
api_base = "{fallback_llm_server.base_url}"
"""
    )
    return stack.model_copy(
        update={
            "responder": "litellm",
            "llm_chains_file": str(path),
            "openai_api_key": SecretStr("sk-test"),
            "anthropic_api_key": SecretStr("sk-ant-test"),
            "health_probes": "postgres",
            "operator_token": SecretStr(TOKEN),
        }
    )


@pytest.fixture
def worker(chained: Settings, workers: WorkerFactory) -> WorkerProcess:
    return workers.start(chained)


def url(worker: WorkerProcess) -> str:
    return f"http://127.0.0.1:{worker.port}"


async def test_forcing_the_primary_open_sends_the_next_message_to_the_fallback_until_closed(
    chained: Settings,
    worker: WorkerProcess,
    llm_server: LLMServer,
    fallback_llm_server: LLMServer,
) -> None:
    chat = Chat(chained)
    assert chat.ask("before").text.startswith("[primary] before")

    opened = circuit_command(chained, "open", CIRCUIT, "--url", url(worker))
    assert opened.returncode == 0, opened.stderr
    assert f"{CIRCUIT}: closed -> forced_open" in opened.stdout
    listed = json.loads(circuit_command(chained, "list", "--json", "--url", url(worker)).stdout)
    assert listed["circuits"][CIRCUIT]["state"] == "forced_open"
    assert listed["circuits"][f"llm:{FALLBACK}"]["state"] == "closed"
    assert listed["counts"]["forced_open"] == 1
    primary_calls = llm_server.request_count

    during = chat.ask("during")

    assert during.text.startswith("[fallback] during") and "claude" in during.model
    assert llm_server.request_count == primary_calls, "the forced-open primary was called"
    assert fallback_llm_server.request_count == 1
    metrics = worker.get("/metrics").text
    assert f'circuit_breaker_state{{name="{CIRCUIT}"}} 3.0' in metrics

    closed = circuit_command(chained, "close", CIRCUIT, "--url", url(worker))
    assert closed.returncode == 0, closed.stderr
    assert f"{CIRCUIT}: forced_open -> closed" in closed.stdout

    after = chat.ask("after")

    assert after.text.startswith("[primary] after")
    assert llm_server.request_count == primary_calls + 1
    assert fallback_llm_server.request_count == 1


async def test_the_pages_list_every_breaker_and_take_encoded_or_plain_names(
    worker: WorkerProcess,
) -> None:
    document = worker.get("/circuits").json()

    assert {CIRCUIT, f"llm:{FALLBACK}", "somabrain"} <= set(document["circuits"])
    assert any(name.startswith("storage:") for name in document["circuits"])
    assert any(name.startswith("tts:") for name in document["circuits"])
    assert document["total"] == len(document["circuits"]) == sum(document["counts"].values())
    assert document["circuits"][CIRCUIT]["state"] == "closed"

    operator = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url(worker), timeout=5.0, headers=operator) as client:
        encoded = f"/circuits/{quote(CIRCUIT, safe='')}"
        disabled = await client.post(encoded, json={"action": "disable"})
        read_back = await client.get(f"/circuits/{CIRCUIT}")
        reset = await client.post(f"/circuits/{CIRCUIT}", json={"action": "reset"})
        bad_action = await client.post(encoded, json={"action": "explode"})
        no_body = await client.post(
            encoded, content=b"not json", headers={"Content-Type": "application/json"}
        )
        unknown = await client.post("/circuits/llm%3Anobody%2Fnothing", json={"action": "open"})
        unknown_get = await client.get("/circuits/nothing")

    assert disabled.status_code == 200
    assert disabled.json() | {"name": CIRCUIT, "state": "disabled"} == disabled.json()
    assert disabled.json()["previous_state"] == "closed"
    assert read_back.json()["state"] == "disabled"
    assert reset.json()["state"] == "closed" and reset.json()["previous_state"] == "disabled"
    assert bad_action.status_code == 400 and "open, close, reset, disable" in bad_action.text
    assert no_body.status_code == 400
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "no circuit named 'llm:nobody/nothing' on this worker"
    assert CIRCUIT in unknown.json()["known"]
    assert unknown_get.status_code == 404
    assert worker.get("/circuits").json()["circuits"][CIRCUIT]["state"] == "closed"


async def test_the_pages_the_metrics_and_the_command_show_the_registry_with_the_producer_gate(
    chained: Settings, worker: WorkerProcess
) -> None:
    pages = set(worker.get("/circuits").json()["circuits"])
    metrics = set(
        re.findall(r'^circuit_breaker_state\{name="([^"]+)"\}', worker.get("/metrics").text, re.M)
    )
    listed = circuit_command(chained, "list", "--json", "--url", url(worker))
    assert listed.returncode == 0, listed.stderr
    command = set(json.loads(listed.stdout)["circuits"])

    assert {"kafka:producer", CIRCUIT, f"llm:{FALLBACK}", "somabrain"} <= pages
    assert pages == metrics == command
    assert worker.get("/circuits/kafka:producer").json()["state"] == "closed"


async def test_the_command_prints_a_table_and_fails_clearly_on_an_unknown_name(
    chained: Settings, worker: WorkerProcess
) -> None:
    table = circuit_command(chained, "--url", url(worker))
    one = circuit_command(chained, "list", CIRCUIT, "--url", url(worker))
    unknown = circuit_command(chained, "open", "llm:nobody/nothing", "--url", url(worker))
    nameless = circuit_command(chained, "disable", "--url", url(worker))

    assert table.returncode == 0, table.stderr
    assert "\033[" not in table.stdout, "colour codes in piped output"
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["CIRCUIT", "STATE", "CALLS", "FAILED", "FAILURE%", "RETRY", "IN"]
    assert any(line.split()[:2] == [CIRCUIT, "closed"] for line in lines)
    assert "circuits:" in lines[-1] and "closed" in lines[-1]
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 3
    assert unknown.returncode == 1
    assert "no circuit named 'llm:nobody/nothing'" in unknown.stderr
    assert CIRCUIT in unknown.stderr
    assert nameless.returncode == 1 and "needs the name of a circuit" in nameless.stderr
    assert worker.get("/circuits").json()["counts"]["forced_open"] == 0


async def test_the_command_says_when_the_worker_is_not_reachable(stack: Settings) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"

    listed = circuit_command(stack, "list", "--url", nowhere)
    opened = circuit_command(stack, "open", CIRCUIT, "--url", nowhere)

    for result in (listed, opened):
        assert result.returncode == 1
        assert f"worker at {nowhere} is not reachable" in result.stderr
