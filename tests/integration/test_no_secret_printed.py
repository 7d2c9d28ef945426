"""A full run with every secret configured: no command output, log line, page or event
shows a password or a token."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from pydantic import SecretStr

from loopback import LLMServer, SomaBrainServer
from sa01.core.redaction import configured_secrets
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.support.commands import command
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import ROOT, WorkerFactory, free_port, settings_env

pytestmark = pytest.mark.integration

TOKEN = "operator-token-7c1e9b2a"
OPENAI_KEY = "sk-openai-key-5d8f3a61"
SOMABRAIN_TOKEN = "somabrain-token-2b7e4c90"
FAKE_DB_PASSWORD = "unused-db-password-93ad"
FAKE_REDIS_PASSWORD = "unused-redis-password-4f1c"
SHORTEST_CHECKED = 8
"""The shared services' own passwords are checked when at least this long (the
generated ones are; a legacy ``sa01`` would match every app id)."""


def preflight(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.update(settings_env(settings))
    return subprocess.run(
        [sys.executable, "-m", "streams.preflight"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_full_run_prints_no_password_and_no_token(
    stack: Settings, llm_server: LLMServer, somabrain: SomaBrainServer, workers: WorkerFactory
) -> None:
    settings = stack.model_copy(
        update={
            "responder": "litellm",
            "llm_model": "openai/gpt-4o",
            "llm_api_base": llm_server.openai_base_url,
            "openai_api_key": SecretStr(OPENAI_KEY),
            "somabrain_url": somabrain.base_url,
            "somabrain_token": SecretStr(SOMABRAIN_TOKEN),
            "operator_token": SecretStr(TOKEN),
        }
    )
    secrets = {s for s in configured_secrets(settings) if len(s) >= SHORTEST_CHECKED}
    secrets |= {FAKE_DB_PASSWORD, FAKE_REDIS_PASSWORD}
    assert {TOKEN, OPENAI_KEY, SOMABRAIN_TOKEN} <= secrets
    worker = workers.start(settings)
    relay = workers.start_relay(settings, metrics_port=free_port())
    message = inbound("hello secrets", session="s-secrets")
    produce_inbound(settings, [message])
    replies = consume(settings, settings.topic("conversation.outbound"), 1, timeout=120)
    assert [decode_message(ConversationReply, r.value).in_reply_to for r in replies] == [
        message.message_id
    ]
    assert llm_server.request_count >= 1
    on_worker = settings.model_copy(update={"web_port": worker.port})
    unreachable_db = settings.model_copy(
        update={"database_url": f"postgresql://sa01:{FAKE_DB_PASSWORD}@127.0.0.1:1/sa01"}
    )
    redis_with_password = settings.model_copy(
        update={"redis_url": f"redis://:{FAKE_REDIS_PASSWORD}@127.0.0.1:1/0"}
    )

    outputs = {
        "preflight": preflight(redis_with_password),
        "preflight-db": preflight(unreachable_db),
        "produce": command(settings, "produce", "--session", "s-secrets", "--text", "again"),
        "status": command(on_worker, "status"),
        "status --json": command(on_worker, "status", "--json"),
        "tail": command(settings, "tail", "--from-beginning", "--max", "3", "--json"),
        "dlq list": command(settings, "dlq", "list"),
        "circuit list": command(on_worker, "circuit", "list", "--json"),
        "circuit open": command(on_worker, "circuit", "open", "somabrain"),
        "migrate (unreachable)": command(unreachable_db, "migrate"),
        "dlq list (unreachable)": command(unreachable_db, "dlq", "list"),
    }
    pages = {
        path: httpx.get(f"http://127.0.0.1:{worker.port}{path}", timeout=5.0).text
        for path in ("/health", "/status", "/circuits", "/metrics", "/", "/stats/", "/router/")
    }
    events = consume(settings, settings.topic("degradation.events"), 1, timeout=30)
    relay.terminate()
    worker.terminate()

    assert outputs["circuit open"].returncode == 0, outputs["circuit open"].stderr
    assert outputs["migrate (unreachable)"].returncode == 1
    assert "redis://:***@127.0.0.1:1/0" in outputs["preflight"].stdout
    assert events, "no degradation event to check"
    texts = {f"{name} (stdout)": out.stdout for name, out in outputs.items()}
    texts |= {f"{name} (stderr)": out.stderr for name, out in outputs.items()}
    texts |= {f"page {path}": body for path, body in pages.items()}
    texts["worker log"] = worker.log_path.read_text(errors="replace")
    texts["relay log"] = relay.log_path.read_text(errors="replace")
    texts["degradation.events"] = "\n".join((e.value or b"").decode() for e in events)
    texts["conversation.outbound"] = "\n".join((r.value or b"").decode() for r in replies)
    assert "worker ready" in texts["worker log"]
    leaks = [
        f"{where}: {secret[:3]}…"
        for where, text in texts.items()
        for secret in secrets
        if secret in text
    ]
    assert not leaks, leaks
