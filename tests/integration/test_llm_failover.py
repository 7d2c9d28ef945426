"""LLM failover end to end: OpenAI primary fails, the Anthropic fallback answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from loopback import FailureMode, LLMServer
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration

FALLBACK = "anthropic/claude-3-5-sonnet-latest"


def chains_file(tmp_path: Path, primary: LLMServer, fallback: LLMServer) -> Path:
    path = tmp_path / "chains.toml"
    path.write_text(
        f"""
[chains]
chat = ["openai/gpt-4o", "{FALLBACK}"]

[models."openai/gpt-4o"]
api_base = "{primary.openai_base_url}"
timeout_seconds = 3

[models."{FALLBACK}"]
api_base = "{fallback.base_url}"
timeout_seconds = 30
"""
    )
    return path


@pytest.mark.parametrize(
    "mode",
    [FailureMode.REFUSE, FailureMode.ERROR_500, FailureMode.RATE_LIMITED, FailureMode.HANG],
)
async def test_the_fallback_model_answers_when_the_primary_fails_and_the_switch_is_counted(
    stack: Settings,
    workers: WorkerFactory,
    llm_server: LLMServer,
    fallback_llm_server: LLMServer,
    tmp_path: Path,
    mode: FailureMode,
) -> None:
    settings = stack.model_copy(
        update={
            "responder": "litellm",
            "llm_chains_file": str(chains_file(tmp_path, llm_server, fallback_llm_server)),
            "openai_api_key": SecretStr("sk-test"),
            "anthropic_api_key": SecretStr("sk-ant-test"),
            "llm_breaker_consecutive_failures": 2,
            "llm_breaker_wait_seconds": 600.0,
            "health_probes": "postgres",
        }
    )
    llm_server.set_mode(mode, retry_after_seconds=600)
    worker = workers.start(settings)
    sent = [inbound(f"question {n}", session="s-failover") for n in range(4)]
    produce_inbound(settings, sent)

    replies = [
        decode_message(ConversationReply, r.value)
        for r in consume(settings, settings.topic("conversation.outbound"), 4, timeout=120)
    ]
    metrics = worker.get("/metrics").text

    assert [r.in_reply_to for r in replies] == [m.message_id for m in sent]
    assert all(r.text.startswith("[fallback] question") for r in replies)
    assert all("claude" in r.model for r in replies)
    assert (
        f'llm_failover_count_total{{from_provider="openai/gpt-4o",to_provider="{FALLBACK}"}} 4.0'
        in metrics
    )
    # Once the primary's breaker is open (or its Retry-After runs), it is not called again.
    assert llm_server.request_count <= 2
    assert fallback_llm_server.request_count == 4
