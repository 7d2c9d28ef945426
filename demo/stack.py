"""The demo's own stack: isolated settings, loopback servers, a worker and a relay process.

Loopback servers stand for every external provider: the chat chain's three models,
SomaBrain, the voice providers (ElevenLabs, OpenAI audio, Deepgram) and S3 (moto); the
local file store lives under the run directory, where the demo can make it fail.

Everything the demo creates is its own: topic prefix, PostgreSQL schema, Faust app id,
web port and data directory, so it can run beside other workers on the same services.
Kafka, PostgreSQL and Redis are the ones ``scripts/services.sh`` runs (``make services``);
stopping and starting the broker goes through that script with the demo's environment,
so it acts on the stack the demo uses (``SA01_STATE_DIR``, ``SA01_KAFKA_PORT``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import httpx
import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql
from pydantic import SecretStr

from loopback import AudioServer, FailureMode, LLMServer, S3Server, SomaBrainServer
from loopback.s3_server import ACCESS_KEY, SECRET_KEY
from sa01.core.kafka_security import librdkafka_config
from sa01.core.settings import Settings
from sa01.core.topics import ensure_topics
from sa01.outbox.migrate import migrate
from sa01.providers.llm_config import SEED_CHAINS

__all__ = [
    "CHAT_CHAIN",
    "ROOT",
    "STORAGE_CHAIN",
    "DemoStack",
    "ManagedProcess",
    "StackError",
    "StackOptions",
    "free_port",
    "settings_env",
]

ROOT: Final = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT: Final = ROOT / "scripts" / "services.sh"
FAUST: Final = str(Path(sys.executable).parent / "faust")
#: The seed's chat chain (SRS 5.1): primary, fallback 1, fallback 2.
CHAT_CHAIN: Final[tuple[str, ...]] = tuple(SEED_CHAINS["chat"])
#: The storage chain of the demo: the seed's ``s3,local,redis`` without Redis, so that with
#: S3 and the local disk down no store takes an upload and the user reads "Upload queued"
#: (stopping Redis would take the sessions' context with it).
STORAGE_CHAIN: Final = "s3,local"
_SAMPLE: Final = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class StackError(RuntimeError):
    """The stack could not be started or controlled; the message says why and what to do."""


@dataclass(frozen=True)
class StackOptions:
    """How to build the demo's stack."""

    run_dir: Path
    """Where logs, the chains file and Faust's data go."""
    web_port: int = 0
    """The worker's web port (0: a free one)."""
    breaker_wait_seconds: float = 5.0
    """How long an open model, voice or storage circuit waits before its trial call."""
    keep: bool = False
    """Keep the topics and the schema at the end (for inspection)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in another process."""
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        value: Any = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        env[alias or f"SA01_{name.upper()}"] = str(value)
    return env


class ManagedProcess:
    """A ``faust -A streams ...`` subprocess in its own session, logging to a file."""

    def __init__(self, name: str, settings: Settings, command: tuple[str, ...], log: Path) -> None:
        self.name = name
        self.log_path = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("SA01_")}
        env.update(settings_env(settings))
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        self._log: IO[bytes] = log.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own venv's faust, fixed arguments
            [FAUST, "-A", "streams", *command],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return int(self.process.pid)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the process's log."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the process group, SIGKILL after ``timeout``; return the exit code."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()
        return int(self.process.returncode)


class DemoStack:
    """Loopback providers, one worker and one relay with settings of their own."""

    def __init__(self, base: Settings, options: StackOptions) -> None:
        self.options = options
        self.demo_id = f"demo{uuid.uuid4().hex[:8]}"
        self.run_dir = options.run_dir
        self.primary = LLMServer(name="primary")
        self.fallback = LLMServer(name="fallback-1")
        self.fallback2 = LLMServer(name="fallback-2")
        self.somabrain = SomaBrainServer(name="somabrain")
        self.elevenlabs = AudioServer(name="elevenlabs")
        self.openai_audio = AudioServer(name="openai")
        self.deepgram = AudioServer(name="deepgram")
        self.s3 = S3Server()
        self.s3_bucket = f"{self.demo_id}-uploads"
        self.local_store_dir = self.run_dir / "local-store"
        """Where the local store's root lives; a regular file here makes the store fail."""
        self.local_root = self.local_store_dir / "files"
        self.web_port = options.web_port or free_port()
        self.base = base
        self.settings = base  # replaced in start() once the servers have their ports
        self.worker: ManagedProcess | None = None
        self.relay: ManagedProcess | None = None
        self.broker_stopped = False
        self._http = httpx.AsyncClient(timeout=3.0)
        self._created_schema = False
        self._created_topics = False

    # ------------------------------------------------------------------ settings

    @property
    def servers(self) -> dict[str, LLMServer]:
        """The loopback LLM server behind each model of the chat chain."""
        return dict(zip(CHAT_CHAIN, (self.primary, self.fallback, self.fallback2), strict=True))

    @property
    def audio_servers(self) -> dict[str, AudioServer]:
        """The loopback server behind each voice provider."""
        return {
            "elevenlabs": self.elevenlabs,
            "openai": self.openai_audio,
            "deepgram": self.deepgram,
        }

    def _loopback_servers(self) -> list[Any]:
        return [
            self.primary,
            self.fallback,
            self.fallback2,
            self.somabrain,
            self.elevenlabs,
            self.openai_audio,
            self.deepgram,
        ]

    def _chains_file(self) -> Path:
        primary, fallback, fallback2 = CHAT_CHAIN
        path = self.run_dir / "chains.toml"
        path.write_text(
            "# Written by the demo: the seed's chat chain on loopback servers.\n"
            "[chains]\n"
            f'chat = ["{primary}", "{fallback}", "{fallback2}"]\n\n'
            f'[models."{primary}"]\napi_base = "{self.primary.openai_base_url}"\n'
            "timeout_seconds = 30\n\n"
            f'[models."{fallback}"]\napi_base = "{self.fallback.base_url}"\n'
            "timeout_seconds = 30\n\n"
            f'[models."{fallback2}"]\napi_base = "{self.fallback2.openai_base_url}"\n'
            "timeout_seconds = 30\n\n"
            "[breaker]\nconsecutive_failures = 2\n"
            f"wait_seconds = {self.options.breaker_wait_seconds}\n"
        )
        return path

    def _worker_settings(self) -> Settings:
        demo_id = self.demo_id
        return self.base.model_copy(
            update={
                "database_schema": demo_id,
                "topic_prefix": f"{demo_id}.",
                "app_id": demo_id,
                "topic_partitions": 4,
                "data_dir": str(self.run_dir / "faust"),
                "web_host": "127.0.0.1",
                "web_port": self.web_port,
                "worker_instance_id": f"{demo_id}-worker",
                "relay_web_port": 0,
                "relay_poll_interval_seconds": 0.2,
                "responder": "litellm",
                "llm_chains_file": str(self._chains_file()),
                # The first call of a worker imports litellm: a short timeout would fail
                # the primary over before any outage. Failures in the demo are fast.
                "llm_timeout_seconds": 30.0,
                "llm_degraded_reply": True,
                "deferred_answer_interval_seconds": 2.0,
                "openai_api_key": SecretStr("sk-demo-loopback"),
                "anthropic_api_key": SecretStr("sk-ant-demo-loopback"),
                "openrouter_api_key": SecretStr("sk-or-demo-loopback"),
                "somabrain_url": self.somabrain.base_url,
                "somabrain_timeout_seconds": 2.0,
                "memory_enabled": True,
                "memory_sync_interval_seconds": 1.0,
                # Voice (seed 5.2): the seed's chains; every provider on a loopback server.
                "elevenlabs_url": self.elevenlabs.base_url,
                "elevenlabs_api_key": SecretStr("xi-demo-loopback"),
                "openai_audio_api_base": self.openai_audio.openai_base_url,
                "deepgram_url": self.deepgram.base_url,
                "deepgram_api_key": SecretStr("dg-demo-loopback"),
                "audio_timeout_seconds": 10.0,
                "audio_breaker_consecutive_failures": 1,
                "audio_breaker_wait_seconds": self.options.breaker_wait_seconds,
                "storage_breaker_consecutive_failures": 1,
                "storage_breaker_wait_seconds": self.options.breaker_wait_seconds,
                # Storage (seed 5.3): S3 on moto, the local store under the run directory.
                "storage_chain": STORAGE_CHAIN,
                "s3_endpoint_url": self.s3.endpoint_url,
                "s3_bucket": self.s3_bucket,
                "aws_access_key_id": SecretStr(ACCESS_KEY),
                "aws_secret_access_key": SecretStr(SECRET_KEY),
                "storage_local_root": str(self.local_root),
                "backup_local_root": str(self.run_dir / "backup"),
                "storage_timeout_seconds": 3.0,
                "upload_retry_backoff_seconds": 0.2,
                "upload_retry_max_backoff_seconds": 1.0,
                # The outages are on purpose: a queued upload is never given up in the demo.
                "upload_max_attempts": 10_000,
                "health_probes": "postgres,kafka,redis,somabrain,storage,audio",
                "health_interval_seconds": 1.0,
                "health_timeout_seconds": 2.0,
                # The demo is about outages: a probe slowed by a busy machine must not
                # read as "degraded" and clutter the event stream.
                "health_slow_seconds": 5.0,
            }
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the loopback servers, prepare schema and topics, start relay and worker."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.local_root.mkdir(parents=True, exist_ok=True)
        for server in self._loopback_servers():
            server.start()
        await asyncio.to_thread(self.s3.start)
        self.settings = self._worker_settings()
        await migrate(self.settings)
        self._created_schema = True
        await ensure_topics(self.settings)
        self._created_topics = True
        self.relay = ManagedProcess(
            "relay", self.settings, ("publish-outbox",), self.run_dir / "relay.log"
        )
        self.worker = ManagedProcess(
            "worker", self.settings, ("worker", "-l", "info"), self.run_dir / "worker.log"
        )

    async def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until the worker is ready and leads (it publishes the events); seconds taken."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            for process in (self.worker, self.relay):
                if process is not None and not process.alive:
                    raise StackError(
                        f"the {process.name} exited ({process.process.returncode}); "
                        f"its log ({process.log_path}) ends with:\n{process.log_tail()}"
                    )
            document = await self.status()
            if document and document.get("worker", {}).get("leader"):
                services = document.get("services", {})
                if all(
                    services.get(name, {}).get("state") == "healthy"
                    for name in ("postgres", "kafka", "somabrain")
                ):
                    return time.monotonic() - started
            await asyncio.sleep(0.3)
        log = self.worker.log_tail() if self.worker else ""
        raise StackError(
            f"the worker was not ready after {timeout:.0f}s; its log ends with:\n{log}"
        )

    async def close(self) -> list[str]:
        """Stop everything the demo started (the broker is restarted if it is still stopped).

        Returns what could not be cleaned up, one line each.
        """
        problems: list[str] = []
        if self.broker_stopped:
            try:
                await self.start_broker()
            except StackError as exc:
                problems.append(str(exc))
        for process in (self.worker, self.relay):
            if process is not None:
                await asyncio.to_thread(process.terminate)
        for server in self._loopback_servers():
            with contextlib.suppress(Exception):
                server.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.s3.stop)
        await self._http.aclose()
        if not self.options.keep:
            try:
                if self._created_topics:
                    await asyncio.to_thread(self._delete_topics)
                if self._created_schema:
                    await self._drop_schema()
            except Exception as exc:
                problems.append(f"could not remove the demo's topics or schema: {exc}")
        shutil.rmtree(self.run_dir / "faust", ignore_errors=True)
        return problems

    def _delete_topics(self) -> None:
        admin = AdminClient({**librdkafka_config(self.settings), "socket.timeout.ms": 5000})
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.demo_id)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result()

    async def _drop_schema(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.settings.database_url, autocommit=True, connect_timeout=5
        ) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.demo_id))
            )

    # ------------------------------------------------------------------ the worker's pages

    async def status(self) -> dict[str, Any] | None:
        """The worker's ``/status`` document, or None while it does not answer."""
        try:
            response = await self._http.get(f"http://127.0.0.1:{self.web_port}/status")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        document = response.json()
        return document if isinstance(document, dict) else None

    async def service_state(self, service: str) -> str | None:
        """The state of ``service`` in the worker's ``/status`` (None when unknown)."""
        document = await self.status()
        if document is None:
            return None
        state = document.get("services", {}).get(service, {}).get("state")
        return str(state) if state is not None else None

    async def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """The samples of the worker's ``/metrics``: (name, labels, value); none when it
        does not answer."""
        try:
            response = await self._http.get(f"http://127.0.0.1:{self.web_port}/metrics")
        except httpx.HTTPError:
            return []
        samples: list[tuple[str, dict[str, str], float]] = []
        for line in response.text.splitlines():
            match = _SAMPLE.match(line)
            if match is None or line.startswith("#"):
                continue
            name, labels, value = match.groups()
            with contextlib.suppress(ValueError):
                samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
        return samples

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample, found, value in await self.metrics()
            if sample == name and labels.items() <= found.items()
        )

    async def failovers(self) -> dict[tuple[str, str], int]:
        """``llm_failover_count`` from the worker's ``/metrics``, by (from, to) model."""
        return await self._failovers("llm_failover_count_total")

    async def provider_failovers(self) -> dict[tuple[str, str, str], int]:
        """``provider_failover_count`` by (chain, from, to) provider."""
        counts: dict[tuple[str, str, str], int] = {}
        for name, labels, value in await self.metrics():
            if name == "provider_failover_count_total":
                key = (labels.get("chain", ""), labels.get("from_provider", ""))
                counts[(*key, labels.get("to_provider", ""))] = round(value)
        return counts

    async def _failovers(self, name: str) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for sample, labels, value in await self.metrics():
            if sample == name:
                pair = (labels.get("from_provider", ""), labels.get("to_provider", ""))
                counts[pair] = round(value)
        return counts

    # ------------------------------------------------------------------ the stores

    def block_local_store(self) -> None:
        """Make the local store fail: a regular file where its root's parent should be."""
        shutil.rmtree(self.local_store_dir, ignore_errors=True)
        self.local_store_dir.write_text("a file where the local store's directory should be\n")

    def unblock_local_store(self) -> None:
        """Give the local store its directory back (idempotent)."""
        if self.local_store_dir.is_file():
            self.local_store_dir.unlink()
        self.local_root.mkdir(parents=True, exist_ok=True)

    @property
    def local_store_blocked(self) -> bool:
        """True while the local store's directory is a regular file."""
        return self.local_store_dir.is_file()

    def local_files(self, prefix: str = "") -> list[str]:
        """The objects the local store holds (keys under ``prefix``), its own temporary
        files excluded."""
        root = self.local_root
        if not root.is_dir():
            return []
        keys = [
            path.relative_to(root).as_posix()
            for path in root.rglob("*")
            if path.is_file() and not path.name.startswith(".upload-")
        ]
        return sorted(key for key in keys if key.startswith(prefix))

    async def s3_objects(self, prefix: str = "") -> dict[str, bytes]:
        """The demo bucket's objects under ``prefix`` (none while S3 or the bucket is missing)."""
        if not self.s3.running:
            return {}
        try:
            found = await asyncio.to_thread(self.s3.objects, self.s3_bucket)
        except Exception as exc:
            if "NoSuchBucket" in f"{type(exc).__name__} {exc}":
                return {}
            raise
        return {key: data for key, data in found.items() if key.startswith(prefix)}

    async def heal_providers(self) -> list[str]:
        """Voice providers answering, S3 running, the local store writable; what was healed."""
        healed: list[str] = []
        for name, server in self.audio_servers.items():
            if server.mode is not FailureMode.OK:
                server.set_mode(FailureMode.OK)
                healed.append(f"{name} audio")
        if not self.s3.running:
            await asyncio.to_thread(self.s3.start)
            healed.append("S3")
        if self.local_store_blocked:
            self.unblock_local_store()
            healed.append("the local store")
        return healed

    # ------------------------------------------------------------------ the broker

    def broker_control_problem(self) -> str | None:
        """Why the demo cannot stop and start the broker it uses (None when it can)."""
        servers = [s.strip() for s in self.settings.kafka_bootstrap_servers.split(",")]
        if len(servers) != 1:
            return (
                "the demo stops a single local broker; SA01_KAFKA_BOOTSTRAP_SERVERS names several"
            )
        host, _, port = servers[0].rpartition(":")
        if host not in _LOCAL_HOSTS:
            return f"the broker {servers[0]} is not on this machine"
        managed = os.environ.get("SA01_KAFKA_PORT", "9092")
        if port != managed:
            return (
                f"the demo uses the broker on port {port}, but scripts/services.sh manages port "
                f"{managed}: set SA01_KAFKA_PORT={port} (and SA01_STATE_DIR) for that stack"
            )
        state = Path(os.environ.get("SA01_STATE_DIR") or ROOT / ".run")
        pidfile = state / "kafka" / "kafka.pid"
        if not pidfile.exists():
            return (
                f"the broker on port {port} was not started by scripts/services.sh "
                f"(no {pidfile}); start it with `make services`"
            )
        return None

    async def stop_broker(self) -> tuple[float, list[str]]:
        """``scripts/services.sh stop kafka``; seconds taken and the script's lines."""
        self.broker_stopped = True
        return await self._services("stop")

    async def start_broker(self) -> tuple[float, list[str]]:
        """``scripts/services.sh start kafka`` (waits until it answers); seconds and lines."""
        taken = await self._services("start")
        self.broker_stopped = False
        return taken

    async def _services(self, action: str) -> tuple[float, list[str]]:
        started = time.monotonic()
        try:
            done = await asyncio.to_thread(
                subprocess.run,
                [str(SERVICES_SCRIPT), action, "kafka"],
                env=dict(os.environ),
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"scripts/services.sh {action} kafka did not finish: {exc}") from exc
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        if done.returncode != 0:
            raise StackError(
                f"scripts/services.sh {action} kafka failed ({done.returncode}):\n"
                + "\n".join(lines[-15:])
            )
        return time.monotonic() - started, lines
