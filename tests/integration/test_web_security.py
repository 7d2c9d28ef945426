"""The operator surface of a real worker and relay: loopback, token, JSON, Origin, Host, cap."""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import SecretStr

from sa01.core.settings import Settings
from tests.support.commands import command
from tests.support.sockets import listeners
from tests.support.worker import WorkerFactory, WorkerProcess, free_port

pytestmark = pytest.mark.integration

TOKEN = "op-token-for-the-web-security-test"
CIRCUIT = "somabrain"


@pytest.fixture
def guarded(stack: Settings) -> Settings:
    return stack.model_copy(
        update={"operator_token": SecretStr(TOKEN), "health_probes": "postgres"}
    )


@pytest.fixture
def worker(guarded: Settings, workers: WorkerFactory) -> WorkerProcess:
    return workers.start(guarded)


def post(worker: WorkerProcess, body: bytes | None = None, **headers: str) -> httpx.Response:
    content = b'{"action": "open"}' if body is None else body
    merged = {"Content-Type": "application/json"} | {
        k.replace("_", "-"): v for k, v in headers.items()
    }
    return httpx.post(
        f"http://127.0.0.1:{worker.port}/circuits/{CIRCUIT}",
        content=content,
        headers={k: v for k, v in merged.items() if v},
        timeout=5.0,
    )


def bearer(token: str = TOKEN) -> str:
    return f"Bearer {token}"


def state(worker: WorkerProcess) -> str:
    return str(worker.get(f"/circuits/{CIRCUIT}").json()["state"])


async def test_the_worker_and_the_relay_listen_on_loopback_only(
    worker: WorkerProcess, guarded: Settings, workers: WorkerFactory
) -> None:
    relay_port = free_port()
    relay = workers.start_relay(guarded, metrics_port=relay_port)
    deadline = time.monotonic() + 60
    while not any(s.port == relay_port for s in listeners(relay.process.pid)):
        assert relay.alive, relay.log_tail()
        assert time.monotonic() < deadline, f"relay never listened:\n{relay.log_tail()}"
        time.sleep(0.2)

    for process, port in ((worker, worker.port), (relay, relay_port)):
        sockets = listeners(process.process.pid)
        assert port in {s.port for s in sockets}, sockets
        assert all(s.loopback_only for s in sockets), sockets
        assert {str(s.address) for s in sockets if s.port == port} == {"127.0.0.1"}


async def test_a_state_change_needs_the_token_json_the_own_origin_and_host_and_a_small_body(
    worker: WorkerProcess, guarded: Settings
) -> None:
    cap = guarded.web_max_body_bytes
    padded = b'{"action": "open", "pad": "' + b"x" * cap + b'"}'

    without = post(worker)
    wrong = post(worker, Authorization=bearer("not-the-token"))
    basic = post(worker, Authorization="Basic b3A6dG9rZW4=")
    plain = post(worker, Authorization=bearer(), Content_Type="text/plain")
    form = post(worker, Authorization=bearer(), Content_Type="application/x-www-form-urlencoded")
    foreign = post(worker, Authorization=bearer(), Origin="https://evil.example")
    other_port = post(worker, Authorization=bearer(), Origin="http://127.0.0.1:1")
    rebound = post(worker, Authorization=bearer(), Host=f"evil.example:{worker.port}")
    rebound_get = httpx.get(
        f"http://127.0.0.1:{worker.port}/status",
        headers={"Host": f"evil.example:{worker.port}"},
        timeout=5.0,
    )
    too_large = post(worker, padded, Authorization=bearer())
    chunked = httpx.post(
        f"http://127.0.0.1:{worker.port}/circuits/{CIRCUIT}",
        content=iter([padded[:100], padded[100:]]),
        headers={"Authorization": bearer(), "Content-Type": "application/json"},
        timeout=5.0,
    )
    assert state(worker) == "closed", "a refused request changed the circuit"

    allowed = post(worker, Authorization=bearer(), Origin=f"http://127.0.0.1:{worker.port}")

    assert without.status_code == 401 and without.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in without.json()["error"]
    assert basic.status_code == 401
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong operator token"
    assert plain.status_code == 415 and form.status_code == 415
    assert foreign.status_code == 403 and "cross-origin" in foreign.text
    assert other_port.status_code == 403
    assert rebound.status_code == 403 and "evil.example" in rebound.text
    assert rebound_get.status_code == 403
    assert too_large.status_code == 413
    assert chunked.status_code == 413 and "bytes" in chunked.json()["error"]
    assert allowed.status_code == 200, allowed.text
    assert state(worker) == "forced_open"
    for response in (without, wrong, plain, foreign, rebound, too_large, allowed):
        assert TOKEN not in response.text
    assert TOKEN not in worker.log_path.read_text(errors="replace")


async def test_the_circuit_command_sends_the_token_and_names_a_wrong_one(
    worker: WorkerProcess, guarded: Settings
) -> None:
    url = f"http://127.0.0.1:{worker.port}"

    opened = command(guarded, "circuit", "open", CIRCUIT, "--url", url)
    wrong = command(
        guarded.model_copy(update={"operator_token": SecretStr("nope")}),
        "circuit",
        "close",
        CIRCUIT,
        "--url",
        url,
    )
    missing = command(
        guarded.model_copy(update={"operator_token": None}),
        "circuit",
        "close",
        CIRCUIT,
        "--url",
        url,
    )

    assert opened.returncode == 0, opened.stderr
    assert f"{CIRCUIT}: closed -> forced_open" in opened.stdout
    assert wrong.returncode == 1 and "answered 403: wrong operator token" in wrong.stderr
    assert missing.returncode == 1 and "answered 401" in missing.stderr
    assert state(worker) == "forced_open"


async def test_without_a_configured_token_state_changes_are_refused_with_how_to_enable(
    stack: Settings, workers: WorkerFactory
) -> None:
    settings = stack.model_copy(update={"health_probes": "postgres"})
    worker = workers.start(settings)

    refused = post(worker, Authorization=bearer("anything"))
    by_command = command(
        settings, "circuit", "open", CIRCUIT, "--url", f"http://127.0.0.1:{worker.port}"
    )

    assert refused.status_code == 403
    assert "set SA01_OPERATOR_TOKEN" in refused.json()["error"]
    assert by_command.returncode == 1 and "set SA01_OPERATOR_TOKEN" in by_command.stderr
    assert state(worker) == "closed"
    assert worker.get("/health").status_code == 200
