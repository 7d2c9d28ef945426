"""Real worker processes (``faust -A streams worker``) for integration and fault tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sa01.core.settings import Settings

FAUST = str(Path(sys.executable).parent / "faust")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in another process."""
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        variable = field.validation_alias if isinstance(field.validation_alias, str) else None
        env[variable or f"SA01_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """One worker process with its own web port and log file."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        extra_env: dict[str, str],
        command: tuple[str, ...] = ("worker", "-l", "info"),
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.port = settings.web_port
        env = {k: v for k, v in os.environ.items() if not k.startswith("SA01_")}
        env.update(settings_env(settings))
        env.update(extra_env)
        env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [FAUST, "-A", "streams", *command],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the worker's log."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until ``/health`` says ready; raise with the log when it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"worker exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0)
                if response.status_code == 200 and response.json().get("ready"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"worker not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def get(self, path: str) -> httpx.Response:
        """GET one of the worker's pages."""
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5.0)

    def close_log(self) -> None:
        """Close the log file handle (idempotent)."""
        if not self._log.closed:
            self._log.close()

    def kill(self) -> None:
        """``kill -9`` the worker (no shutdown code runs)."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log.close()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for a clean exit; return the exit code."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()
        return int(self.process.returncode)


class WorkerFactory:
    """Starts workers for a test and kills any left running."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[WorkerProcess] = []
        self._ports: dict[str, int] = {}

    def start(
        self, settings: Settings, *, instance: str = "w1", wait: bool = True, **env: str
    ) -> WorkerProcess:
        """Start a worker with ``settings`` (web port and instance id filled in).

        A restarted instance keeps its web port: Faust's static members must keep their
        URL, or the cached assignment fails its URL check and the consumer stops.
        """
        port = self._ports.setdefault(instance, free_port())
        worker_settings = settings.model_copy(
            update={"web_port": port, "worker_instance_id": f"{settings.app_id}-{instance}"}
        )
        log_path = self.directory / f"worker-{instance}-{len(self.started)}.log"
        worker = WorkerProcess(worker_settings, log_path, env)
        self.started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def start_relay(
        self, settings: Settings, *, name: str = "relay", metrics_port: int = 0
    ) -> WorkerProcess:
        """Start ``faust -A streams publish-outbox``; ``/metrics`` on ``metrics_port`` (0: none)."""
        relay_settings = settings.model_copy(update={"relay_web_port": metrics_port})
        log_path = self.directory / f"{name}-{len(self.started)}.log"
        relay = WorkerProcess(relay_settings, log_path, {}, command=("publish-outbox",))
        self.started.append(relay)
        return relay

    def kill_all(self) -> None:
        """Kill every worker still running."""
        for worker in self.started:
            if worker.alive:
                worker.kill()
            worker.close_log()
