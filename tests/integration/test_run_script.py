"""``make run``'s script: a relay, a background worker and a replies worker, stopped together.

``scripts/run.sh`` runs on the test's isolated topics, schema and ports: the replies
worker answers, the background worker stores the reply's memory in SomaBrain (the
replies worker never consumes the memory topic), and when the replies worker stops
(Ctrl-C, or its own exit) the script stops the other two.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from loopback import SomaBrainServer
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import ROOT, free_port, settings_env

pytestmark = pytest.mark.integration


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def records_of(port: int, consumer: str) -> float:
    """Records ``consumer`` finished in the worker on ``port``, every outcome together."""
    pattern = re.compile(rf'^consumer_records_total\{{consumer="{consumer}",[^}}]*\}} (\S+)$')
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    return sum(float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line)))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(check: Callable[[], object], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(
                f"== {p.name}\n{p.read_text()[-2000:]}" for p in log.parent.rglob("*.log")
            )
            raise AssertionError(f"not {what} within {timeout:.0f}s; logs:\n{logs}")
        time.sleep(0.2)


async def test_run_script_answers_with_two_workers_and_stops_every_process_with_the_foreground_one(
    stack: Settings, somabrain: SomaBrainServer, tmp_path: Path
) -> None:
    replies_port, background_port = free_port(), free_port()
    settings = stack.model_copy(
        update={
            "somabrain_url": somabrain.base_url,
            "health_probes": "postgres,kafka,redis,somabrain",
            "web_port": replies_port,
            "relay_web_port": free_port(),
            "data_dir": str(tmp_path / "data"),
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SA01_")}
    env |= settings_env(settings)
    del env["SA01_WORKER_ROLE"]  # unset: the script runs the two roles
    env |= {"SA01_BACKGROUND_WEB_PORT": str(background_port), "SA01_STATE_DIR": str(tmp_path)}
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [str(ROOT / "scripts" / "run.sh")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: healthy(replies_port) and healthy(background_port), 120, "ready", log)
        message = inbound("hello both roles", tenant="tenant-run")
        produce_inbound(settings, [message])
        [reply] = consume(settings, settings.topic("conversation.outbound"), 1, timeout=90)
        assert decode_message(ConversationReply, reply.value).in_reply_to == message.message_id
        wait_until(lambda: somabrain.memories("tenant-run"), 90, "the memory stored", log)

        assert records_of(background_port, "memory") >= 1
        assert records_of(replies_port, "memory") == 0
        assert records_of(background_port, "conversation") == 0
        started = log.read_text()
        pids = [int(p) for p in re.findall(r"started \(pid (\d+)", started)]
        assert len(pids) == 2, started  # the relay and the background worker

        # The replies worker (the script's foreground child) stops: the script stops the
        # relay and the background worker and exits.
        children = subprocess.run(
            ["pgrep", "-P", str(run.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        [foreground] = [int(c) for c in children if int(c) not in pids]
        os.kill(foreground, signal.SIGTERM)
        assert run.wait(90) is not None
        wait_until(lambda: not any(alive(p) for p in pids), 30, "every process stopped", log)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
            os.killpg(run.pid, signal.SIGKILL)
