"""``make demo`` end to end: every scenario runs, everything is answered, nothing is lost;
the voice messages of scenario 3 are answered through every fallback, the uploads of
scenario 4 all land in S3 once.

The demo stops and restarts the Kafka broker (scenario 5), so this test runs in the serial
phase of ``make test`` (marker ``stops_services``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fix_services import ROOT, ServiceEndpoints

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.stops_services]


@pytest.mark.timeout(900)
def test_the_demo_answers_every_message_once_through_every_scenario(
    services: ServiceEndpoints, tmp_path: Path
) -> None:
    if not services.native:
        raise RuntimeError("the demo stops the broker: it needs the native services")
    env = dict(os.environ)
    env.update(
        {
            "SA01_KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap,
            "SA01_DATABASE_URL": services.database_url,
            "SA01_REDIS_URL": services.redis_url,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
    )
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo",
            "--fast",
            "--no-colour",
            "--run-dir",
            str(tmp_path / "run"),
            "--summary-json",
            str(summary_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    output = done.stdout
    print(output)

    assert done.returncode == 0, f"exit {done.returncode}\n{output[-6000:]}\n{done.stderr[-2000:]}"
    assert re.search(r"^\s+lost\s+0\s", output, re.MULTILINE), output[-3000:]
    assert re.search(r"^\s+duplicates\s+0\s", output, re.MULTILINE), output[-3000:]
    assert re.search(r"^\s+uploads lost\s+0\s", output, re.MULTILINE), output[-3000:]
    assert re.search(r"^\s+uploads duplicated\s+0\s", output, re.MULTILINE), output[-3000:]
    assert "RESULT: everything answered, nothing lost" in output
    summary = json.loads(summary_path.read_text())
    assert summary["lost"] == 0 and summary["duplicates"] == 0
    assert summary["sent"] > 0 and summary["answered"] == summary["sent"]
    assert summary["dead_letters"] == 0
    assert summary["outbox_left"] == 0 and summary["memories_pending"] == 0
    statuses = {s["key"]: s["status"] for s in summary["scenarios"]}
    assert not [key for key, status in statuses.items() if status == "failed"], statuses
    passed = {key for key, status in statuses.items() if status == "passed"}
    assert passed >= {"healthy", "somabrain", "llm", "audio", "storage", "kafka"}, statuses
    assert summary["via_outbox"] > 0, "no message went through the outbox while Kafka was down"
    assert summary["failovers"] > 0
    kafka = summary["transitions"]["kafka"]
    assert "unavailable" in kafka and kafka[-1] == "healthy", kafka

    # Scenario 3: each voice link served in turn, and the primaries came back.
    assert summary["voice_messages"] >= 4
    assert set(summary["voice_providers"]) >= {"elevenlabs", "openai", "native"}
    assert summary["degraded"].get("tts", 0) > 0 and summary["degraded"].get("stt", 0) > 0
    for service in ("tts.elevenlabs", "stt.openai"):
        states = summary["transitions"][service]
        assert "unavailable" in states and states[-1] == "healthy", (service, states)

    # Scenario 4: every upload queued while no store could take it, then in S3 once.
    assert summary["uploads_sent"] > 0
    assert summary["uploads_queued"] == summary["uploads_sent"]
    assert summary["uploads_stored"] == summary["uploads_sent"]
    assert summary["uploads_lost"] == 0 and summary["uploads_duplicated"] == 0
    assert summary["uploads_temporary_left"] == 0
    storage = summary["transitions"]["storage"]
    assert "unavailable" in storage and storage[-1] == "healthy", storage
