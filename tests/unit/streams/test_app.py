"""Building the app is explicit: importing a module builds nothing and reads no setting;
``streams.app`` (what ``faust -A streams`` reads) builds it once; ``create_app`` declares
every agent and command. Each case runs in a fresh interpreter (the build is per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.support.worker import FAUST, ROOT

BAD_SETTING = {"SA01_TOPIC_PARTITIONS": "banana"}
PACKAGES = ["sa01", "schemas", "tables", "agents", "streams"]


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SA01_")}
    environment["SA01_STATE_DIR"] = os.environ.get("SA01_STATE_DIR", ".run")
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_importing_every_module_builds_no_app_even_with_a_bad_setting() -> None:
    done = python(
        f"""
        import importlib, os, pkgutil
        before = dict(os.environ)
        count = 0
        for name in {PACKAGES!r}:
            package = importlib.import_module(name)
            for info in pkgutil.walk_packages(package.__path__, name + "."):
                if not info.name.endswith("__main__"):
                    importlib.import_module(info.name)
                    count += 1
        import streams
        assert streams._built is None, "importing built the app"
        assert dict(os.environ) == before, "importing changed the environment"
        print("imported", count)
        """,
        BAD_SETTING,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 60
    assert "invalid settings" not in done.stderr


def test_streams_app_builds_from_the_environment_and_a_bad_setting_exits_2() -> None:
    done = python("import streams.console\nimport streams\nstreams.app\n", BAD_SETTING)
    assert done.returncode == 2
    assert "error: invalid settings: topic_partitions" in done.stderr
    assert "banana" not in done.stderr


def test_streams_app_is_the_app_once_built_even_after_the_submodule_is_imported() -> None:
    done = python(
        """
        from streams.app import StreamsApp, create_app
        import streams
        first = streams.app
        assert isinstance(first, StreamsApp) and streams.app is first
        import streams.app
        assert streams.app is first
        print(" ".join(sorted(first.agents)))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["backups", "conversation", "degradation", "memory", "uploads"]


def test_the_worker_role_picks_the_agents_and_every_role_declares_the_health_table() -> None:
    done = python(
        """
        from sa01.core.settings import Settings
        from streams.app import create_app
        for role in ("all", "replies", "background"):
            app = create_app(Settings(worker_role=role))
            print(role, ",".join(sorted(app.agents)), "service_health" in app.tables)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "all backups,conversation,degradation,memory,uploads True",
        "replies conversation,degradation True",
        "background backups,memory,uploads True",
    ]


def test_a_bad_worker_role_is_refused_by_name() -> None:
    done = python(
        "import streams.console\nimport streams\nstreams.app\n", {"SA01_WORKER_ROLE": "both"}
    )
    assert done.returncode == 2
    assert "error: invalid settings: worker_role" in done.stderr


def test_create_app_builds_from_explicit_settings() -> None:
    done = python(
        """
        from sa01.core.settings import Settings
        from streams.app import create_app
        import streams
        app = create_app(Settings(app_id="explicit-app", topic_prefix="x."))
        assert streams._built is None, "create_app must not touch the package's app"
        print(app.conf.id, " ".join(sorted(app.agents)))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "explicit-app",
        "backups",
        "conversation",
        "degradation",
        "memory",
        "uploads",
    ]


def test_faust_finds_the_app_and_its_commands() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SA01_")}
    done = subprocess.run(
        [FAUST, "-A", "streams", "--help"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    commands = {line.split()[0] for line in done.stdout.split("Commands:")[1].splitlines()[1:]}
    assert {
        "worker",
        "migrate",
        "create-topics",
        "produce",
        "publish-outbox",
        "status",
        "tail",
        "dlq",
        "circuit",
        "backup",
        "sync-memories",
    } <= commands
