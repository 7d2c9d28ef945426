"""Client CPU per LLM call: litellm as it was called before, the chain's path now, the
openai SDK, raw httpx.

Each path makes N sequential chat completions against one loopback LLM server
(``python -m loopback.llm_server``) run in its own process, so ``time.process_time()``
counts this process's CPU only: the client's. The paths take turns, round after round,
so a busy machine slows them alike; each figure is the median over the rounds.

* ``litellm, as before``: ``litellm.acompletion`` with the arguments the responder
  used to pass (``api_base``, ``api_key``, ``timeout``, ``num_retries=0``): the baseline;
* ``litellm, shared client``: the same with a shared ``openai.AsyncOpenAI`` as
  ``client=``, the most litellm offers to skip its own work;
* ``our path (OpenAIResponder)``: the chain's responder of ``openai/...`` models;
* ``openai SDK``: one shared ``AsyncOpenAI``, ``chat.completions.create``;
* ``raw httpx``: one shared ``httpx.AsyncClient``, POST and ``json()``.

The loopback server answers with ``Connection: close``, so every path pays a new TCP
connection per call alike. Goal: our path <= 2x the openai SDK's CPU per call.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.common import table, write_result
from bench.procs import Proc, free_port
from sa01.providers._litellm import load_litellm
from sa01.providers.llm_clients import OpenAIClients, OpenAIResponder, load_openai

__all__ = ["run"]

Call = Callable[[], Awaitable[Any]]
MESSAGES = [{"role": "user", "content": "hello"}]


def _start_server() -> tuple[Proc, str]:
    port = free_port(26800)
    argv = [sys.executable, "-m", "loopback.llm_server", "--port", str(port), "--name", "bench"]
    server = Proc("llm-server", argv, {"PATH": "/usr/bin:/bin"})

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    server.wait_until(healthy, timeout=60, interval=0.2)
    return server, f"http://127.0.0.1:{port}/v1"


async def _cpu_per_call(call: Call, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - started) / calls * 1000


async def run(quick: bool) -> dict[str, Any]:
    calls, rounds = (100, 3) if quick else (400, 5)
    server, api_base = _start_server()
    litellm = await load_litellm()
    openai = await load_openai()
    sdk = openai.AsyncOpenAI(base_url=api_base, api_key="sk-bench", max_retries=0)
    raw = httpx.AsyncClient(base_url=api_base, headers={"authorization": "Bearer sk-bench"})
    clients = OpenAIClients()
    ours = OpenAIResponder(
        "openai/gpt-4o", api_base=api_base, api_key="sk-bench", timeout=30.0, clients=clients
    )

    async def litellm_before() -> None:
        await litellm.acompletion(
            model="openai/gpt-4o",
            messages=MESSAGES,
            api_base=api_base,
            api_key="sk-bench",
            timeout=30.0,
            num_retries=0,
        )

    async def litellm_shared() -> None:
        await litellm.acompletion(
            model="openai/gpt-4o",
            messages=MESSAGES,
            api_base=api_base,
            api_key="sk-bench",
            timeout=30.0,
            num_retries=0,
            client=sdk,
        )

    async def our_path() -> None:
        await ours.respond("hello", session_key="bench")

    async def openai_sdk() -> None:
        await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, timeout=30.0)

    async def raw_httpx() -> None:
        response = await raw.post(
            "/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}, timeout=30.0
        )
        response.raise_for_status()
        response.json()

    paths: dict[str, Call] = {
        "litellm, as before": litellm_before,
        "litellm, shared client": litellm_shared,
        "our path (OpenAIResponder)": our_path,
        "openai SDK": openai_sdk,
        "raw httpx": raw_httpx,
    }
    figures: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for call in paths.values():
            for _ in range(10):
                await call()
        for _ in range(rounds):
            for name, call in paths.items():
                figures[name].append(await _cpu_per_call(call, calls))
    finally:
        await clients.aclose()
        await sdk.close()
        await raw.aclose()
        server.stop()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    sdk_ms, httpx_ms = medians["openai SDK"], medians["raw httpx"]
    rows = [("path", "CPU ms/call (median)", "runs", "x openai SDK", "x raw httpx")]
    rows += [
        (
            name,
            f"{ms:.2f}",
            " ".join(f"{v:.2f}" for v in figures[name]),
            f"{ms / sdk_ms:.2f}",
            f"{ms / httpx_ms:.2f}",
        )
        for name, ms in medians.items()
    ]
    print(table(rows))
    ratio = medians["our path (OpenAIResponder)"] / sdk_ms
    print(
        f"{rounds} rounds of {calls} sequential calls per path, server in its own process; "
        f"our path {ratio:.2f}x the openai SDK (goal <= 2x), "
        f"litellm as before {medians['litellm, as before'] / sdk_ms:.2f}x, "
        f"litellm with a shared client {medians['litellm, shared client'] / sdk_ms:.2f}x"
    )
    results: dict[str, Any] = {
        "calls_per_round": calls,
        "rounds": rounds,
        "cpu_ms_per_call": medians,
        "runs_ms_per_call": figures,
        "our_path_vs_openai_sdk": ratio,
        "litellm_before_vs_openai_sdk": medians["litellm, as before"] / sdk_ms,
        "litellm_shared_client_vs_openai_sdk": medians["litellm, shared client"] / sdk_ms,
    }
    write_result("llm_client_cpu", results)
    return results
