"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks and print the tables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

BENCHES = (
    "breaker",
    "failover",
    "relay_drain",
    "notify_wakeup",
    "producer_latency",
    "worker_throughput",
    "detection",
    "footprint",
    "memory_backlog",
    "llm_client_cpu",
)

#: Benches that never touch the broker: no warm-up before them alone.
WITHOUT_BROKER = {"breaker", "failover", "llm_client_cpu"}


def main() -> int:
    # The tables are the output: the chains' and clients' own warnings stay quiet.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller workloads, fewer runs")
    parser.add_argument("--only", nargs="*", choices=BENCHES, help="run only these")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip warming the broker's JIT first (bench/broker_warmup.py)",
    )
    args = parser.parse_args()
    chosen = args.only or list(BENCHES)
    if not args.no_warmup and not set(chosen) <= WITHOUT_BROKER:
        from bench import broker_warmup

        print("\n== broker warm-up ==", flush=True)
        started = time.monotonic()
        asyncio.run(broker_warmup.warm())
        print(f"(broker warm-up: {time.monotonic() - started:.0f} s)", flush=True)
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        started = time.monotonic()
        if name == "breaker":
            from bench import breaker_overhead

            breaker_overhead.main(["--iterations", "50000" if args.quick else "200000"])
        elif name == "failover":
            from bench import failover

            asyncio.run(failover.run(args.quick))
        elif name == "relay_drain":
            from bench import relay_drain

            asyncio.run(relay_drain.run(args.quick))
        elif name == "notify_wakeup":
            from bench import notify_wakeup

            asyncio.run(notify_wakeup.run(args.quick))
        elif name == "producer_latency":
            from bench import producer_latency

            asyncio.run(producer_latency.run(args.quick))
        elif name == "worker_throughput":
            from bench import worker_throughput

            asyncio.run(worker_throughput.run(args.quick))
        elif name == "detection":
            from bench import detection

            asyncio.run(detection.run(args.quick))
        elif name == "footprint":
            from bench import footprint

            asyncio.run(footprint.run(args.quick))
        elif name == "memory_backlog":
            from bench import memory_backlog

            asyncio.run(memory_backlog.run(args.quick))
        elif name == "llm_client_cpu":
            from bench import llm_client_cpu

            asyncio.run(llm_client_cpu.run(args.quick))
        print(f"({name}: {time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
