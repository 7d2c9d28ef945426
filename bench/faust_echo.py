"""The framework's own floor: a Faust agent that echoes each record, and nothing else.

``python -m bench.faust_echo GUARANTEE BOOTSTRAP INBOUND OUTBOUND GROUP`` runs one Faust
worker (faust-streaming, the worker's version) whose single agent reads ``INBOUND`` as
raw bytes and sends each value back on ``OUTBOUND`` with its key: no decoding, no
lanes, no database, no outbox. ``GUARANTEE`` is Faust's ``processing_guarantee``:
``at_least_once`` (offsets committed by Faust's commit loop) or ``exactly_once``
(Faust's transactional producer per partition, the consumed offsets in the same
transaction). Both commit every 0.1 s, as the Quix Streams peer does. It prints
``ready`` once its partitions are assigned, and runs until SIGTERM.

Issue 17 asks the worker for a quarter of the bare aiokafka loop: whatever this agent
reaches is the most any worker built on Faust's agent loop can reach on this machine.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from typing import Any, NoReturn

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import faust

GUARANTEES = ("at_least_once", "exactly_once")


def build(guarantee: str, bootstrap: str, inbound: str, outbound: str, group: str) -> faust.App:
    """The echo app (its agent registered, not started)."""
    if guarantee not in GUARANTEES:
        raise SystemExit(f"guarantee must be one of {', '.join(GUARANTEES)}, not {guarantee!r}")
    datadir = tempfile.mkdtemp(prefix="faust-echo-")
    atexit.register(shutil.rmtree, datadir, ignore_errors=True)  # the worker exits the process
    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        processing_guarantee=guarantee,
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        store="memory://",
        datadir=datadir,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.1,
        producer_acks=-1,
    )
    source = app.topic(inbound, key_type=bytes, value_type=bytes)
    replies = app.topic(outbound, key_type=bytes, value_type=bytes)
    said: list[bool] = []

    @app.agent(source)
    async def echo(stream: Any) -> None:
        async for event in stream.events():
            await replies.send(key=event.key, value=event.value)

    @app.on_rebalance_complete.connect
    async def _ready(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if not said:
            said.append(True)
            # On a line of its own: the worker may have written a terminal escape before.
            print("\nready", flush=True)

    return app


def main(argv: list[str]) -> NoReturn:
    """Run the worker with ``GUARANTEE BOOTSTRAP INBOUND OUTBOUND GROUP`` until SIGTERM."""
    if len(argv) != 5:
        raise SystemExit(__doc__)
    app = build(*argv)
    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # exits the process when the worker stops


if __name__ == "__main__":
    main(sys.argv[1:])
