"""Upload and backup tasks: one tenant's tasks waiting on a store hold only its share."""

from __future__ import annotations

import asyncio

import pytest

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.pipeline.dead_lettering import InboundMessage
from schemas.messages import BackupTask
from streams.runtime import BACKUPS, UPLOADS, Runtime, lane_group

WAIT = 5.0


@pytest.mark.parametrize(
    ("key", "tenant"),
    [
        (b"acme:session-1", b"acme"),  # conversation
        (b"acme:agent-7", b"acme"),  # memory
        (b"acme/message-1/attachment-2", b"acme"),  # upload task
        (
            BackupTask(task_id="t/1", tenant_id="acme", storage_keys=("a",)).partition_key.encode(),
            b"acme",
        ),
        (b"no-separator", b"no-separator"),
    ],
)
def test_the_tenant_leads_every_key(key: bytes, tenant: bytes) -> None:
    assert lane_group(InboundMessage("topic", 0, 0, key, b"")) == tenant


@pytest.mark.parametrize(
    ("consumer", "key_of"), [(UPLOADS, "{t}/m-{n}/a"), (BACKUPS, "{t}:task-{n}")]
)
async def test_one_tenants_waiting_tasks_do_not_hold_another_tenants(
    consumer: str, key_of: str
) -> None:
    settings = Settings(background_read_ahead=20, tenant_max_share=0.25)
    runtime = Runtime(settings, Metrics())
    runtime.ready.set()
    tasks = runtime.consumers[consumer]
    store_answers = asyncio.Event()
    running: dict[bytes, int] = {}
    done: list[bytes] = []

    async def store(message: InboundMessage) -> str:
        tenant = lane_group(message) or b""
        running[tenant] = running.get(tenant, 0) + 1
        if tenant == b"slow":
            await store_answers.wait()
        done.append(tenant)
        return "stored"

    tasks.handle = store
    acks: list[int] = []

    def acked() -> None:
        acks.append(1)

    for n in range(40):
        key = key_of.format(t="slow", n=n).encode()
        await asyncio.wait_for(tasks.submit(InboundMessage("t", 0, n, key, b"{}"), 0, acked), WAIT)
    await asyncio.wait_for(
        tasks.submit(
            InboundMessage("t", 1, 0, key_of.format(t="other", n=0).encode(), b"{}"), 1, acked
        ),
        WAIT,
    )
    async with asyncio.timeout(WAIT):
        while b"other" not in done:
            await asyncio.sleep(0.01)
    assert running[b"slow"] == 5, "the slow tenant holds a quarter of the read-ahead, no more"
    store_answers.set()
    await asyncio.wait_for(tasks.lanes.wait_idle(), WAIT)
    assert done.count(b"slow") == 40
    assert len(acks) == 41
