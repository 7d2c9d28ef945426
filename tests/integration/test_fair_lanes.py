"""Fair lanes on a real worker: a hot session's backlog is parked without slots, and a
session read behind it, on the same partition, is answered long before the hot one
drains (issue 12)."""

from __future__ import annotations

import time
import zlib

import pytest

from loopback import FailureMode, LLMServer
from sa01.core.settings import Settings
from schemas.codec import decode_message
from schemas.messages import ConversationReply
from tests.integration.test_worker_end_to_end import with_llm
from tests.support.kafka import consume, inbound, produce_inbound
from tests.support.worker import WorkerFactory

pytestmark = pytest.mark.integration


async def test_a_session_behind_a_hot_one_on_its_partition_is_not_held_back(
    stack: Settings, workers: WorkerFactory, llm_server: LLMServer
) -> None:
    # 20 slots, one per session (the message it answers); a model answering in 20 ms:
    # the hot session's 300 messages take at least 6 s one after the other.
    settings = with_llm(stack, llm_server, max_in_flight=20, memory_enabled=False)
    llm_server.set_mode(FailureMode.SLOW, delay_seconds=0.02)
    worker = workers.start(settings)
    hot = [inbound(f"hot {n}", session="hot") for n in range(300)]
    # Quiet sessions on the hot one's partition (librdkafka's default partitioner:
    # CRC32 of the key), produced after it: without fair lanes they wait behind it.
    sessions = [f"q{n}" for n in range(200) if same_partition(settings, f"tenant-b:q{n}")][:5]
    quiet = [inbound(f"quiet {n}", session=sessions[n % 5], tenant="tenant-b") for n in range(20)]
    produce_inbound(settings, hot)
    produce_inbound(settings, quiet)

    started = time.monotonic()
    records = consume(settings, settings.topic("conversation.outbound"), 320, timeout=240)
    replies = [(decode_message(ConversationReply, r.value), r.offset, r.partition) for r in records]

    by_id = {reply.in_reply_to: reply for reply, _, _ in replies}
    assert {m.message_id for m in hot + quiet} <= set(by_id), worker.log_tail()
    hot_order = [
        reply.in_reply_to
        for reply, _, _ in sorted(replies, key=lambda item: (item[2], item[1]))
        if reply.session_id == "hot"
    ]
    assert hot_order == [m.message_id for m in hot]  # order within the session holds
    # Every quiet reply was published before the hot session was half answered.
    published = {
        decode_message(ConversationReply, r.value).in_reply_to: r.timestamp for r in records
    }
    halfway = sorted(published[m.message_id] for m in hot)[len(hot) // 2]
    assert max(published[m.message_id] for m in quiet) < halfway
    print(f"\n320 replies in {time.monotonic() - started:.1f}s")


def same_partition(settings: Settings, key: str) -> bool:
    """Whether ``key`` lands on the partition of ``tenant-a:hot``."""
    partitions = settings.topic_partitions
    return zlib.crc32(key.encode()) % partitions == zlib.crc32(b"tenant-a:hot") % partitions
