"""Pausing and resuming the fetch of one topic's partitions (Faust's flow control).

Background agents pause their own topic when their records in flight reach a
high-water mark (``LanedConsumer.pause_above``) instead of blocking their stream:
Faust's single fetcher would otherwise wait on the full stream and stop delivering
every other topic, ``conversation.inbound`` included.
"""

from __future__ import annotations

import logging

from streams.app import StreamsApp

__all__ = ["pause_topic", "resume_topic"]

logger = logging.getLogger(__name__)


def pause_topic(app: StreamsApp, topic: str) -> None:
    """Stop fetching the partitions of ``topic`` this worker owns."""
    consumer = app.consumer
    consumer.pause_partitions([tp for tp in consumer.assignment() if tp.topic == topic])
    logger.debug("paused fetching %s", topic)


def resume_topic(app: StreamsApp, topic: str) -> None:
    """Fetch the partitions of ``topic`` this worker owns again."""
    consumer = app.consumer
    consumer.resume_partitions([tp for tp in consumer.assignment() if tp.topic == topic])
    logger.debug("resumed fetching %s", topic)
