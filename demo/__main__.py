"""``python -m demo [--fast] [--scenario NAME ...]``: the seed's scenarios, live (``make demo``).

Exit codes: 0 everything answered, nothing lost or duplicated, every scenario showed what
it should; 1 a message or an upload was lost or duplicated; 2 a scenario did not behave as the seed
says, or the demo could not run; 130 interrupted (the broker is started again if needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from demo.observer import Backlog, Sender, TopicReader, count_uploads
from demo.scenarios import (
    SCENARIOS,
    UPLOADS_PREFIX,
    WARM_UP,
    Demo,
    Scenario,
    ScenarioResult,
    find_scenarios,
    run_scenario,
)
from demo.stack import ROOT, DemoStack, StackError, StackOptions
from demo.summary import Summary, print_summary, tally
from demo.ui import UI
from sa01.core.errors import ResilienceError
from sa01.core.redaction import describe_validation_error, redact_url
from sa01.core.settings import Settings
from sa01.providers.audio import kokoro_installed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    names = ", ".join(f"{s.key} ({s.number})" for s in SCENARIOS)
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Walk live through the seed's degradation scenarios on a real stack.",
    )
    parser.add_argument(
        "--fast", action="store_true", help="fewer messages and shorter waits (about half)"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this scenario (repeatable; after the warm-up): {names}",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--web-port", type=int, default=0, help="the worker's web port (default: a free one)"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="logs and data (default .run/demo/<time>)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the demo's topics and schema at the end"
    )
    parser.add_argument(
        "--summary-json", type=Path, default=None, help="also write the summary as JSON here"
    )
    colour = parser.add_mutually_exclusive_group()
    colour.add_argument("--colour", dest="colour", action="store_true", default=None)
    colour.add_argument("--no-colour", dest="colour", action="store_false")
    return parser.parse_args(argv)


def _default_run_dir() -> Path:
    state = Path(os.environ.get("SA01_STATE_DIR") or ROOT / ".run")
    return state / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 (librdkafka's and the libraries' logs) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _intro(ui: UI, stack: DemoStack, chosen: Sequence[Scenario]) -> None:
    settings = stack.settings
    ui.heading("sa01-resilience demo: the seed's degradation scenarios, live")
    worker = stack.worker
    relay = stack.relay
    port = stack.web_port
    if worker is not None:
        ui.line(f"  worker       pid {worker.pid}, http://127.0.0.1:{port}/status /metrics")
    if relay is not None:
        ui.line(f"  relay        pid {relay.pid} (faust -A streams publish-outbox)")
    ui.line(
        f"  isolation    topics {settings.topic_prefix}*, schema {settings.database_schema}, "
        f"app id {settings.app_id}"
    )
    redis = redact_url(settings.redis_url)
    ui.line(f"  services     Kafka {settings.kafka_bootstrap_servers}, Redis {redis}")
    for n, (model, server) in enumerate(stack.servers.items()):
        role = "primary" if n == 0 else f"fallback {n}"
        head = "chat chain" if n == 0 else ""
        ui.line(f"  {head:<12} {role:<11} {model:<40} loopback {server.base_url}")
    ui.line(f"  SomaBrain    loopback {stack.somabrain.base_url}")
    tts = ", ".join(_link(stack, name, "tts") for name in settings.tts_chain.split(","))
    stt = ", ".join(_link(stack, name, "stt") for name in settings.stt_chain.split(","))
    ui.line(f"  voice        TTS {tts}")
    ui.line(f"  {'':<12} STT {stt}")
    ui.line(
        f"  storage      chain {settings.storage_chain}: S3 (moto) {stack.s3.endpoint_url}, "
        f"bucket {settings.s3_bucket}"
    )
    ui.line(f"  {'':<12} local store {stack.local_root}")
    ui.line(f"  logs         {stack.run_dir}")
    plan = ", ".join(
        f"{s.number} {s.key}" + ("" if s.run else " (not yet available)") for s in chosen
    )
    ui.line(f"  scenarios    {plan}")


def _link(stack: DemoStack, name: str, chain: str) -> str:
    """One link of a voice chain for the intro: where it is served."""
    server = stack.audio_servers.get(name)
    if server is not None:
        return f"{name} :{server.port}"
    if name == "native":
        return "native (the client)" if chain == "tts" else "native (the client's transcript)"
    if name == "kokoro" and not kokoro_installed():
        return "kokoro (not installed)"
    return name


async def _settle(demo: Demo) -> None:
    """Wait until every message is answered and the outbox and pending memories are empty."""
    ui = demo.ui
    ui.heading("Settling: every answer, the outbox and the memories")
    sent = demo.sender.sent
    await demo.replies_to(sent, timeout=180, label="all messages answered", quiet=True, real=True)
    _, peak = await demo.drain("outbox", demo.backlog.outbox, timeout=120, unit="published")
    demo.outbox_peak = max(demo.outbox_peak, peak)
    await demo.drain("pending memories", demo.backlog.pending_memories, timeout=90, unit="synced")
    seconds = 2.0 if demo.fast else 4.0
    ui.note(f"watching {seconds:.0f}s more for any reply delivered twice")
    await asyncio.sleep(seconds)


async def run(args: argparse.Namespace, ui: UI, run_dir: Path) -> Summary | None:
    """Start the stack, run the scenarios, settle and count; None when it could not run."""
    started = time.monotonic()
    chosen = find_scenarios(args.scenario)
    base = Settings.load()
    options = StackOptions(
        run_dir=run_dir,
        web_port=args.web_port,
        breaker_wait_seconds=3.0 if args.fast else 5.0,
        keep=args.keep,
    )
    stack = DemoStack(base, options)
    reader: TopicReader | None = None
    backlog: Backlog | None = None
    sender: Sender | None = None
    echo: asyncio.Task[None] | None = None
    results: list[ScenarioResult] = []
    try:
        await stack.start()
        _intro(ui, stack, chosen)
        ui.step("Starting the worker and the relay")
        waited = await stack.wait_ready()
        ui.ok(f"the worker is ready and leads its group ({waited:.1f}s)")
        reader = TopicReader(stack.settings)
        await asyncio.to_thread(reader.start)
        backlog = Backlog(stack.settings)
        await backlog.open()
        sender = Sender(stack.settings, backlog.database)
        await sender.start()
        demo = Demo(ui, stack, reader, backlog, sender, fast=args.fast)
        echo = asyncio.create_task(demo.echo())
        for scenario in [WARM_UP, *chosen]:
            results.append(await run_scenario(demo, scenario))
        await _settle(demo)
        return tally(
            sent=sender.sent,
            replies=reader.replies,
            events=reader.events,
            failovers=await stack.failovers(),
            dead_letters=await backlog.dead_letters(),
            memory_keys={m.key for m in stack.somabrain.memories()},
            memories_pending=await backlog.pending_memories(),
            outbox_peak=demo.outbox_peak,
            outbox_left=await backlog.outbox(),
            results=results,
            seconds=time.monotonic() - started,
            uploads=count_uploads(
                demo.uploads,
                await stack.s3_objects(UPLOADS_PREFIX),
                reader.upload_tasks(),
                len(stack.local_files(UPLOADS_PREFIX)),
            ),
        )
    finally:
        if echo is not None:
            echo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await echo
        ui.step("Stopping the worker, the relay and the loopback servers")
        if sender is not None:
            await sender.stop()
        if reader is not None:
            await asyncio.to_thread(reader.stop)
        if backlog is not None:
            await backlog.close()
        for problem in await stack.close():
            ui.bad(problem)
        kept = " (topics and schema kept)" if args.keep else ""
        ui.note(f"logs in {run_dir}{kept}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit code says whether anything was lost or duplicated."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    args = parse_args(argv)
    ui = UI(colour=args.colour)
    if args.list:
        for scenario in SCENARIOS:
            state = "" if scenario.run else f"  ({scenario.unavailable})"
            ui.line(f"{scenario.number}  {scenario.key:<10} {scenario.title}{state}")
        return 0
    try:
        find_scenarios(args.scenario)
        Settings.load()
    except ValidationError as exc:
        print(f"error: invalid settings: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = (args.run_dir or _default_run_dir()).resolve()
    summary: Summary | None = None
    with _stderr_to(run_dir / "demo-stderr.log"):
        try:
            summary = asyncio.run(run(args, ui, run_dir))
        except (ResilienceError, StackError) as exc:
            ui.bad(f"the demo could not run: {exc}")
            ui.note("are the services up? `make services` (or scripts/services.sh up)")
        except KeyboardInterrupt:
            ui.bad("interrupted: everything the demo started is stopped again")
            return 130
        except Exception as exc:
            traceback.print_exc()
            ui.bad(f"the demo failed: {exc!r} (traceback in {run_dir / 'demo-stderr.log'})")
    if summary is None:
        return 2
    print_summary(ui, summary)
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary.as_json(), indent=2) + "\n")
    if not summary.ok:
        return 1
    return 0 if summary.scenarios_ok else 2


if __name__ == "__main__":
    sys.exit(main())
