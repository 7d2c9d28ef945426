"""The peer row: a plain exactly-once Quix Streams echo app, as its own process.

``.cache/peers-venv/bin/python bench/peers/quix_echo.py BOOTSTRAP INBOUND OUTBOUND GROUP``
reads ``INBOUND`` and produces each record's value back on ``OUTBOUND`` with its key,
with ``processing_guarantee="exactly-once"`` (Kafka transactions, the consumed offsets
committed in the same transaction, every ``COMMIT_INTERVAL_SECONDS``). It runs in a
virtualenv of its own (``make peers``; quixstreams pins its own confluent-kafka) and
imports nothing of the project. It prints ``ready`` once its partitions are assigned,
and runs until SIGTERM.
"""

from __future__ import annotations

import sys
from typing import Any

from quixstreams import Application  # type: ignore[import-not-found]

#: Quix commits (here: the Kafka transaction) every ``commit_interval``, 5 s by default:
#: replies become visible to read_committed consumers only then. 0.1 s keeps its latency
#: comparable with the worker, which commits within milliseconds.
COMMIT_INTERVAL_SECONDS = 0.1


class EchoApp(Application):  # type: ignore[misc]
    """Says ``ready`` on its first partition assignment."""

    said_ready = False

    def _on_assign(self, consumer: Any, partitions: Any) -> None:
        super()._on_assign(consumer, partitions)
        if not self.said_ready:
            self.said_ready = True
            print("ready", flush=True)


def main(argv: list[str]) -> int:
    """Run the echo app with ``BOOTSTRAP INBOUND OUTBOUND GROUP``."""
    bootstrap, inbound, outbound, group = argv
    app = EchoApp(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=COMMIT_INTERVAL_SECONDS,
        auto_create_topics=False,
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    source = app.topic(inbound, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(outbound, key_serializer="bytes", value_serializer="bytes")
    app.dataframe(source).to_topic(sink)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
