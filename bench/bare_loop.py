"""The throughput baseline: a bare aiokafka consume-and-produce loop, as its own process.

``python -m bench.bare_loop BOOTSTRAP INBOUND OUTBOUND GROUP`` reads ``INBOUND`` in
batches, produces each record's value back as the reply on ``OUTBOUND`` (same key, acks
all, idempotent), waits for the acks and commits; no decoding, no database, no outbox.
It prints ``ready`` once its partitions are assigned, and runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener


class _Ready(ConsumerRebalanceListener):  # type: ignore[misc]
    """Prints ``ready`` on the first assignment."""

    def __init__(self) -> None:
        self.said = False

    async def on_partitions_revoked(self, revoked: object) -> None:
        """Nothing to do."""

    async def on_partitions_assigned(self, assigned: object) -> None:
        """Say ready once."""
        if not self.said:
            self.said = True
            print("ready", flush=True)


async def loop(bootstrap: str, inbound: str, outbound: str, group: str) -> None:
    """Consume, reply, commit until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    consumer.subscribe([inbound], listener=_Ready())
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            if not batches:
                continue
            acks = [
                await producer.send(outbound, record.value, key=record.key)
                for records in batches.values()
                for record in records
            ]
            await asyncio.gather(*acks)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str]) -> int:
    """Run the loop with ``BOOTSTRAP INBOUND OUTBOUND GROUP``."""
    bootstrap, inbound, outbound, group = argv
    asyncio.run(loop(bootstrap, inbound, outbound, group))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
