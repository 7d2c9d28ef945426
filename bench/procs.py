"""Processes of the benches: real workers and relays, bare baselines, services, RSS.

Workers run as ``faust -A streams worker`` with the bench's isolated settings passed as
``SA01_*`` variables (as ``tests/support/worker.py`` does), each with its own web port
from 26000 up so they never collide with the test suite's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from sa01.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FAUST = str(Path(sys.executable).parent / "faust")
SERVICES = ROOT / "scripts" / "services.sh"
LOGS = Path(tempfile.gettempdir()) / "sa01-bench-logs"


def free_port(start: int = 26000) -> int:
    """A TCP port free on 127.0.0.1: the first from ``start`` plus an offset of this
    process's own (benches run at once by several processes would otherwise pick the same
    port before either binds it, and one would poll the other's worker)."""
    first = start + os.getpid() % 97 * 3
    for port in range(first, first + 2000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port from {start}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in another process."""
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        env[alias or f"SA01_{name.upper()}"] = str(value)
    return env


#: The roles of a machine's processes in :func:`machine_cpu_seconds`, by a piece of their
#: command line; the first match wins, and the rest is ``other`` (the load, the watcher).
PROCESS_ROLES = (
    ("publish-outbox", "relay"),
    ("streams worker", "target"),
    ("bench.bare_loop", "target"),
    ("quix_echo", "target"),
    ("bench.eos_shape", "target"),
    ("bench.faust_echo", "target"),
    ("loopback.somabrain_server", "somabrain"),
    ("kafka.Kafka", "broker"),
    ("postgres", "postgresql"),
    ("redis-server", "redis"),
)


def machine_cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this machine's processes, summed by role
    (:data:`PROCESS_ROLES`). Processes that ended are gone from the sum: read it before
    and after a measurement whose processes all live through it."""
    ticks = os.sysconf("SC_CLK_TCK")
    by_role: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended
        role = next((r for piece, r in PROCESS_ROLES if piece in command), "other")
        by_role[role] = by_role.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return by_role


def peak_rss_kib(pid: int) -> int:
    """The peak resident set size of ``pid`` (``VmHWM`` in /proc/PID/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


class Proc:
    """A child process in its own session, with a log file and a clock from its start."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], *, watch_stdout: bool = False
    ) -> None:
        """Start ``argv``; with ``watch_stdout`` its output passes through a reader thread
        that notes the ``ready`` line, otherwise it goes straight to the log file."""
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self._ready_at: float | None = None
        self._ready = threading.Event()
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if watch_stdout else subprocess.DEVNULL,
            stdout=subprocess.PIPE if watch_stdout else self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader: threading.Thread | None = None
        if watch_stdout:
            self._reader = threading.Thread(target=self._pump, daemon=True)
            self._reader.start()

    def _pump(self) -> None:
        """Copy stdout to the log; note when a line ``ready`` appears."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self._ready_at is None and line.strip() == b"ready":
                self._ready_at = time.perf_counter()
                self._ready.set()
            self._log.write(line)
            self._log.flush()

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's output."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def peak_rss_kib(self) -> int:
        """``VmHWM`` of the process, in KiB."""
        return peak_rss_kib(self.pid)

    def wait_ready_line(self, timeout: float = 90.0) -> float:
        """Seconds from start to the ``ready`` line on stdout."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if not self.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} never said ready:\n{self.log_tail()}")
        assert self._ready_at is not None
        return self._ready_at - self.started_at

    def wait_until(self, check: Callable[[], bool], timeout: float, interval: float) -> float:
        """Poll ``check`` until true; seconds from start (raise with the log if it dies)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            if check():
                return time.perf_counter() - self.started_at
            time.sleep(interval)
        raise RuntimeError(f"{self.name}: condition not met in {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``; close the log."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._log.close()


class FaustProc(Proc):
    """``faust -A streams worker`` or ``publish-outbox`` with the given settings."""

    def __init__(self, name: str, settings: Settings, command: tuple[str, ...]) -> None:
        self.settings = settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("SA01_")}
        env.update(settings_env(settings))
        env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        super().__init__(name, [FAUST, "-A", "streams", *command], env)

    def get(self, path: str) -> httpx.Response:
        """GET one of the worker's pages."""
        return httpx.get(f"http://127.0.0.1:{self.settings.web_port}{path}", timeout=2.0)

    def healthy_ready(self) -> bool:
        """True when ``/health`` says ready."""
        try:
            response = self.get("/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and bool(response.json().get("ready"))

    def status(self) -> dict[str, Any]:
        """The ``/status`` document, or ``{}`` while it is not served."""
        try:
            response = self.get("/status")
        except httpx.HTTPError:
            return {}
        return dict(response.json()) if response.status_code == 200 else {}

    def wait_health_ready(self, timeout: float = 120.0) -> float:
        """Seconds from process start to ``/health`` ready (polled every 20 ms)."""
        return self.wait_until(self.healthy_ready, timeout, 0.02)


def worker_settings(settings: Settings, data_dir: str, **overrides: Any) -> Settings:
    """``settings`` with a free web port from 26000, its own data dir and instance id."""
    return settings.model_copy(
        update={
            "web_port": free_port(26000),
            "data_dir": data_dir,
            "worker_instance_id": f"{settings.app_id}-w1",
            **overrides,
        }
    )


def start_worker(settings: Settings, data_dir: str, **overrides: Any) -> FaustProc:
    """Start ``faust -A streams worker -l info`` (not waiting for it)."""
    return FaustProc(
        "worker",
        worker_settings(settings, data_dir, **overrides),
        ("worker", "-l", "info"),
    )


def start_relay(settings: Settings) -> FaustProc:
    """Start ``faust -A streams publish-outbox`` with its metrics on a free port."""
    relay_settings = settings.model_copy(update={"relay_web_port": free_port(26500)})
    return FaustProc("relay", relay_settings, ("publish-outbox",))


def python_proc(name: str, args: list[str]) -> Proc:
    """``python ARGS`` with this environment; it signals readiness with a ``ready`` line."""
    return Proc(name, [sys.executable, *args], dict(os.environ), watch_stdout=True)


def _port(url: str, default: int) -> int:
    return urlsplit(url if "//" in url else f"//{url}").port or default


def check_controlled_stack(settings: Settings) -> None:
    """Refuse to stop services unless ``scripts/services.sh`` controls the ones in use.

    The script acts on ``SA01_KAFKA_PORT`` / ``SA01_POSTGRES_PORT`` / ``SA01_REDIS_PORT``
    (defaults 9092/5432/6379); the bench's clients use ``SA01_KAFKA_BOOTSTRAP_SERVERS``
    and friends. If they differ, stopping would hit a stack nobody measures.
    """
    pairs = {
        "kafka": (
            _port(settings.kafka_bootstrap_servers.split(",")[0], 9092),
            int(os.environ.get("SA01_KAFKA_PORT", "9092")),
        ),
        "postgres": (
            _port(settings.database_url, 5432),
            int(os.environ.get("SA01_POSTGRES_PORT", "5432")),
        ),
        "redis": (_port(settings.redis_url, 6379), int(os.environ.get("SA01_REDIS_PORT", "6379"))),
    }
    wrong = {name: ports for name, ports in pairs.items() if ports[0] != ports[1]}
    if wrong:
        raise RuntimeError(
            "the bench's services are not the ones scripts/services.sh controls "
            f"(client port, script port): {wrong}; export SA01_KAFKA_PORT, "
            "SA01_POSTGRES_PORT and SA01_REDIS_PORT to match"
        )


def service(action: str, name: str) -> float:
    """``scripts/services.sh ACTION NAME`` with this environment; seconds it took."""
    started = time.perf_counter()
    subprocess.run(
        [str(SERVICES), action, name], check=True, capture_output=True, timeout=240, cwd=ROOT
    )
    return time.perf_counter() - started
