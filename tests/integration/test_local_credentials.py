"""``scripts/services.sh`` on a fresh state directory: generated passwords, scram, no trust,
a private socket directory, a Redis password, and no password on any command line."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from sa01.core.redaction import configured_secrets
from sa01.core.settings import CREDENTIALS_FILE, Settings
from tests.fix_services import SERVICES_SCRIPT
from tests.support.worker import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_state() -> Iterator[tuple[Path, dict[str, str]]]:
    """A state directory of its own (reachable by the postgres user) and free ports."""
    state = Path(tempfile.mkdtemp(prefix="sa01-creds-", dir="/tmp"))
    state.chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SA01_")},
        "SA01_STATE_DIR": str(state),
        "SA01_POSTGRES_PORT": str(free_port()),
        "SA01_REDIS_PORT": str(free_port()),
        "SA01_KAFKA_PORT": str(free_port()),
        "SA01_CACHE_DIR": str(SERVICES_SCRIPT.parent.parent / ".cache"),
    }
    try:
        yield state, env
    finally:
        for name in ("redis", "postgres"):
            subprocess.run([str(SERVICES_SCRIPT), "stop", name], env=env, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def cmdlines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return lines


def test_the_script_generates_passwords_and_requires_them(
    fresh_state: tuple[Path, dict[str, str]],
) -> None:
    state, env = fresh_state
    for name in ("postgres", "redis"):
        subprocess.run([str(SERVICES_SCRIPT), "start", name], env=env, check=True, timeout=300)
    credentials = state / CREDENTIALS_FILE
    settings = Settings(_env_file=credentials)  # type: ignore[call-arg]
    passwords = configured_secrets(settings)
    pg_dir = state / "postgres"

    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert len(passwords) == 2 and all(len(p) >= 32 for p in passwords), "two generated"
    assert f":{env['SA01_POSTGRES_PORT']}/" in settings.database_url
    hba = (pg_dir / "data" / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert all("trust" not in rule for rule in rules), hba
    assert {rule[-1] for rule in rules if rule[0] == "host"} == {"scram-sha-256"}
    assert stat.S_IMODE((pg_dir / "sock").stat().st_mode) == 0o700
    with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("sa01",)
    stored = dict(
        line.split("=", 1) for line in credentials.read_text().splitlines() if "=" in line
    )
    wrong = settings.database_url.replace(stored["SA01_POSTGRES_PASSWORD"], "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{env['SA01_POSTGRES_PORT']}/postgres",
            connect_timeout=5,
        )
    assert redis.Redis.from_url(settings.redis_url).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=int(env["SA01_REDIS_PORT"]), protocol=2).ping()
    running = cmdlines()
    assert any(f"redis-server 127.0.0.1:{env['SA01_REDIS_PORT']}" in line for line in running)
    assert any(f"{pg_dir}/data" in line for line in running), "postgres is not running"
    for password in passwords:
        assert not [line for line in running if password in line]

    # A second start keeps the same passwords (the file is the source of truth).
    subprocess.run([str(SERVICES_SCRIPT), "stop", "redis"], env=env, check=True, timeout=120)
    subprocess.run([str(SERVICES_SCRIPT), "start", "redis"], env=env, check=True, timeout=120)
    again = Settings(_env_file=credentials)  # type: ignore[call-arg]
    assert again.redis_url == settings.redis_url
    assert redis.Redis.from_url(again.redis_url).ping()
