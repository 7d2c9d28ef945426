"""The outbox's shard count is one per deployment: recorded, enforced, changed safely."""

from __future__ import annotations

import asyncio

import pytest

from sa01.core.errors import ServiceUnavailableError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.layout import ShardCountMismatchError, read_layout
from sa01.outbox.relay import OutboxRelay
from sa01.outbox.store import OutboxRecord, OutboxStore
from tests.integration.test_outbox_relay import statuses, values_by_key, wait_for
from tests.support.commands import command

pytestmark = pytest.mark.integration


async def add(database: Database, settings: Settings, start: int, count: int) -> None:
    """Rows ``start`` .. ``start + count - 1`` over 6 keys (values are the row numbers)."""
    store = OutboxStore()
    async with database.connection() as conn, conn.transaction():
        for n in range(start, start + count):
            record = OutboxRecord(
                topic=settings.topic("conversation.outbound"),
                key=f"key-{n % 6}".encode(),
                value=f"{n}".encode(),
                idempotency_key=f"row-{n}",
                headers={"idempotency-key": f"row-{n}"},
            )
            await store.add(conn, record, settings.outbox_max_attempts)


def with_shards(settings: Settings, shards: int) -> Settings:
    return settings.model_copy(update={"outbox_shards": shards, "relay_lock_retry_seconds": 0.2})


async def test_a_relay_of_another_shard_count_publishes_nothing(stack: Settings) -> None:
    """The first relay records its count; one counting differently refuses every shard,
    also while it runs (it keeps refusing, and the rows wait for a relay that agrees)."""
    one, two = with_shards(stack, 1), with_shards(stack, 2)
    async with Database(stack) as database:
        await add(database, stack, 0, 20)
        assert await OutboxRelay(one, database, Metrics()).drain() == 20
        async with database.connection() as conn:
            assert (await read_layout(conn, two)).recorded == 1

        await add(database, stack, 20, 10)
        with pytest.raises(ShardCountMismatchError, match="published with 1 shards"):
            await OutboxRelay(two, database, Metrics()).drain()
        running = OutboxRelay(two, database, Metrics())
        await running.start()
        try:
            await asyncio.sleep(1.5)
            assert not running.active
        finally:
            await running.stop()
        assert (await statuses(database))["pending"] == 10


async def test_changing_the_count_drains_with_the_old_one_then_records_the_new(
    stack: Settings,
) -> None:
    one, three = with_shards(stack, 1), with_shards(stack, 3)
    async with Database(stack) as database:
        await add(database, stack, 0, 30)
        assert await OutboxRelay(one, database, Metrics()).drain() == 30
        await add(database, stack, 30, 40)  # waiting while the relays are stopped

        assert await OutboxRelay(one, database, Metrics()).change_shard_count(3) == 40
        async with database.connection() as conn:
            layout = await read_layout(conn, three)
        assert (layout.recorded, layout.in_flight) == (3, 0)

        await add(database, stack, 70, 30)
        with pytest.raises(ShardCountMismatchError, match="published with 3 shards"):
            await OutboxRelay(one, database, Metrics()).drain()
        assert await OutboxRelay(three, database, Metrics()).drain() == 30
        assert await statuses(database) == {}  # all 100 published (and deleted)
    for key, values in values_by_key(stack, 100).items():
        assert values == sorted(values), f"{key!r} out of order across the change"


async def test_the_count_does_not_change_while_a_relay_of_it_runs(stack: Settings) -> None:
    two = with_shards(stack, 2)
    async with Database(stack) as database:
        running = OutboxRelay(two, database, Metrics())
        await running.start()
        try:
            await wait_for(lambda: running.active)
            with pytest.raises(ServiceUnavailableError, match="another relay holds the lock"):
                await OutboxRelay(two, database, Metrics()).change_shard_count(4, lock_timeout=1.0)
        finally:
            await running.stop()
        async with database.connection() as conn:
            assert (await read_layout(conn, two)).recorded == 2


async def test_the_commands_say_which_count_is_recorded_and_refuse_another(
    stack: Settings,
) -> None:
    two = with_shards(stack, 2)
    async with Database(stack) as database:
        await add(database, stack, 0, 5)
    shown = await asyncio.to_thread(command, two, "outbox-shards")
    assert shown.returncode == 0, shown.stderr
    assert '"recorded": null' in shown.stdout and '"configured": 2' in shown.stdout

    changed = await asyncio.to_thread(command, two, "outbox-shards", "--set", "3")
    assert changed.returncode == 0, changed.stderr
    assert "now published with 3 shards (5 rows drained with 2 first)" in changed.stderr

    refused = await asyncio.to_thread(command, two, "publish-outbox", "--once")
    assert refused.returncode == 1
    assert "SA01_OUTBOX_SHARDS is 2 here, but the outbox is published with 3" in refused.stderr
    for bad_count in ("0", "65"):  # 65: no relay could be configured with it
        bad = await asyncio.to_thread(command, two, "outbox-shards", "--set", bad_count)
        assert bad.returncode == 1 and "1 to 64 shards" in bad.stderr, bad.stderr
    shown = await asyncio.to_thread(command, two, "outbox-shards")
    assert '"recorded": 3' in shown.stdout, "a refused --set changed nothing"
