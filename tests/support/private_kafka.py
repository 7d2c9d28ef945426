"""A Kafka broker of one's own, for tests and benches that stop the broker.

The shared broker (``scripts/services.sh`` on 9092) is never stopped by these: a
:class:`PrivateKafka` runs the same script with its own state directory, ports and no
SASL listener, so ``start``/``stop`` act on the private broker's pid file only. Starting
one costs a JVM start (tens of seconds on a loaded machine). The broker jars come from
``.cache/`` (``SA01_CACHE_DIR`` to share another checkout's).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

__all__ = ["PrivateKafka"]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "scripts" / "services.sh"
SHARED_PORTS = frozenset({9092, 9093, 9094})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateKafka:
    """A single-node KRaft broker on free ports with its data under a temporary folder."""

    def __init__(self, heap: str = "384m") -> None:
        self.port = _free_port()
        self.controller_port = _free_port()
        if {self.port, self.controller_port} & SHARED_PORTS:
            raise RuntimeError("a private broker must not use the shared broker's ports")
        self.state = Path(tempfile.mkdtemp(prefix="sa01-private-kafka-"))
        self.heap = heap

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SA01_STATE_DIR": str(self.state),
                "SA01_KAFKA_PORT": str(self.port),
                "SA01_KAFKA_CONTROLLER_PORT": str(self.controller_port),
                "SA01_KAFKA_SASL_PORT": "0",
                "SA01_KAFKA_HEAP": self.heap,
            }
        )
        return env

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(SERVICES), *args], env=self._env(), check=True, capture_output=True, timeout=240
        )

    def start(self) -> None:
        """Start the broker (formatting its storage the first time); wait until it answers."""
        self._run("start", "kafka")

    def stop(self) -> None:
        """Stop this broker (SIGTERM, its own pid file)."""
        self._run("stop", "kafka")

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` (auto-creation is off, as on the shared broker)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=60)

    def remove(self) -> None:
        """Stop the broker and delete its data."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.state, ignore_errors=True)
