"""The app's commands: ``faust -A streams migrate|create-topics|produce|publish-outbox|...``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click
from faust.cli import argument, option

from sa01.core.errors import ResilienceError
from sa01.core.heap import freeze_startup_heap
from sa01.core.redaction import redact_url
from sa01.core.topics import CONVERSATION_INBOUND, DEGRADATION_EVENTS, ensure_topics
from sa01.outbox.database import Database
from sa01.outbox.layout import read_layout
from sa01.outbox.migrate import migrate
from sa01.outbox.producer import ResilientProducer
from sa01.outbox.relay import OutboxRelay
from sa01.pipeline.records import message_record
from schemas.messages import ConversationInbound, UseCase
from streams.console import Console, dump_json, format_status
from streams.inline_attachments import inline_attachment, read_upload
from streams.runtime import check_schema

if TYPE_CHECKING:
    from streams.app import StreamsApp

__all__ = [
    "register",
    "register_memory_command",
    "register_operator_commands",
    "register_storage_commands",
]


def _fail(exc: BaseException) -> NoReturn:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(1)


def register(app: StreamsApp) -> None:
    """Declare the commands on ``app``."""
    settings = app.settings

    @app.command()
    async def migrate_command(self: Any) -> None:
        """Apply the SQL migrations to the configured schema."""
        try:
            applied = await migrate(settings)
        except ResilienceError as exc:
            _fail(exc)
        if applied:
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
        else:
            print(f"schema {settings.database_schema!r} is up to date")

    migrate_command.__name__ = "migrate"

    @app.command()
    async def create_topics(self: Any) -> None:
        """Create the project's topics (the broker does not auto-create them)."""
        try:
            created = await ensure_topics(settings)
        except ResilienceError as exc:
            _fail(exc)
        print("\n".join(f"created {name}" for name in created) or "all topics exist")

    @app.command(
        option("--tenant", default="tenant-1", help="Tenant id."),
        option("--session", default="session-1", help="Session id."),
        option("--agent", default="agent-1", help="Agent id."),
        option("--use-case", default="chat", type=str, help="chat, coding or fast."),
        option("--count", default=1, type=int, help="How many messages to send."),
        option("--text", default="Hello!", help="The message text."),
        option(
            "--attach",
            multiple=True,
            type=click.Path(exists=True, dir_okay=False),
            help="A file to upload with the message (repeatable).",
        ),
        option(
            "--voice",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="An audio file: send a voice message (--text is then the client's transcript).",
        ),
    )
    async def produce(
        self: Any,
        tenant: str,
        session: str,
        agent: str,
        use_case: str,
        count: int,
        text: str,
        attach: tuple[str, ...],
        voice: str | None,
    ) -> None:
        """Send messages to conversation.inbound (Kafka, else the outbox); print their ids."""
        try:
            chosen = UseCase(use_case)
        except ValueError:
            _fail(ValueError(f"--use-case must be one of {', '.join(u.value for u in UseCase)}"))
        files = [*([voice] if voice else []), *attach]
        try:
            contents = [await asyncio.to_thread(read_upload, settings, path) for path in files]
        except ResilienceError as exc:
            _fail(exc)
        database = Database(settings)
        producer = ResilientProducer(settings, database, app.metrics)
        await database.open()
        await producer.start()
        topic = settings.topic(CONVERSATION_INBOUND)
        paths: Counter[str] = Counter()
        try:
            for n in range(count):
                message_id = str(uuid.uuid4())
                message = ConversationInbound(
                    message_id=message_id,
                    tenant_id=tenant,
                    session_id=session,
                    agent_id=agent,
                    text=("" if voice and text == "Hello!" else text)
                    if count == 1
                    else f"{text} ({n + 1}/{count})",
                    use_case=chosen,
                    created_at=datetime.now(UTC),
                    voice=voice is not None,
                    attachments=tuple(
                        inline_attachment(tenant, message_id, path, data)
                        for path, data in zip(files, contents, strict=True)
                    ),
                )
                result = await producer.send(
                    message_record(topic, message.partition_key, message, message.message_id)
                )
                paths[result.path.value] += 1
                print(message.message_id)
        except ResilienceError as exc:
            _fail(exc)
        finally:
            await producer.stop()
            await database.close()
        print(
            f"sent {count}: {paths['kafka']} acknowledged by Kafka, {paths['outbox']} kept in "
            "the outbox (the relay publishes them)",
            file=sys.stderr,
        )

    @app.command(
        option("--once", is_flag=True, default=False, help="Drain the outbox, then exit."),
    )
    async def publish_outbox(self: Any, once: bool) -> None:
        """Publish the PostgreSQL outbox to Kafka (takes over free outbox shards; keeps trying)."""
        try:
            await ensure_topics(settings)
            await check_schema(settings)
        except ResilienceError as exc:
            _fail(exc)
        database = Database(settings)
        relay = OutboxRelay(settings, database, app.metrics)
        await database.open()
        if settings.relay_web_port and not once:
            from prometheus_client import start_http_server

            start_http_server(settings.relay_web_port, settings.web_host, app.metrics.registry)
            print(f"relay metrics on http://{settings.web_host}:{settings.relay_web_port}/metrics")
        try:
            if once:
                published = await relay.drain()
                print(json.dumps({"published": published}))
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await relay.start()
            freeze_startup_heap()
            await stop.wait()
        except ResilienceError as exc:
            _fail(exc)
        finally:
            await relay.stop()
            await database.close()

    @app.command(
        option("--set", "shards", default=None, type=int, help="Record a new shard count."),
    )
    async def outbox_shards(self: Any, shards: int | None) -> None:
        """The outbox's shard count; --set N drains with the old count and records N."""
        database = Database(settings)
        try:
            await check_schema(settings)
            await database.open()
            async with database.connection() as conn:
                layout = await read_layout(conn, settings)
            if shards is None:
                print(
                    json.dumps(
                        {
                            "recorded": layout.recorded,
                            "configured": layout.configured,
                            "in_flight": layout.in_flight,
                        }
                    )
                )
                return
            old = layout.recorded or settings.outbox_shards
            relay = OutboxRelay(
                settings.model_copy(update={"outbox_shards": old}), database, app.metrics
            )
            published = await relay.change_shard_count(shards)
        except ResilienceError as exc:
            _fail(exc)
        finally:
            await database.close()
        print(
            f"the outbox is now published with {shards} shards ({published} rows drained with "
            f"{old} first); set SA01_OUTBOX_SHARDS={shards} in every relay and worker",
            file=sys.stderr,
        )


def register_operator_commands(app: StreamsApp) -> None:
    """``tail`` and ``status``."""
    settings = app.settings

    @app.command(
        option("--json", "as_json", is_flag=True, default=False, help="One JSON value per line."),
        option("--from-beginning", is_flag=True, default=False, help="Start at the oldest."),
        option("--max", "max_records", default=0, type=int, help="Stop after N (0: follow)."),
        option("--idle-exit", default=0.0, type=float, help="Stop after S idle seconds."),
    )
    async def tail(
        self: Any,
        *topics: str,
        as_json: bool,
        from_beginning: bool,
        max_records: int,
        idle_exit: float,
    ) -> None:
        """Follow a topic (default degradation.events): one readable line per record."""
        from streams.tailing import follow

        name = topics[0] if topics else DEGRADATION_EVENTS
        try:
            await follow(
                settings,
                settings.topic(name) if not name.startswith(settings.topic_prefix) else name,
                as_json=as_json,
                from_beginning=from_beginning,
                max_records=max_records,
                idle_exit=idle_exit,
            )
        except ResilienceError as exc:
            _fail(exc)

    @app.command(
        option("--json", "as_json", is_flag=True, default=False, help="Print the JSON document."),
        option("--url", default="", help="The worker's base URL (default from settings)."),
    )
    async def status(self: Any, as_json: bool, url: str) -> None:
        """The degradation status: a table of services (from the worker, else the topic)."""
        from streams.tailing import status_document

        try:
            document, origin = await status_document(settings, url or None)
        except ResilienceError as exc:
            _fail(exc)
        console = Console()
        if as_json:
            console.line(dump_json(document))
            return
        console.line(f"({origin})")
        for line in format_status(document, console):
            console.line(line)


def register_memory_command(app: StreamsApp) -> None:
    """``sync-memories [--once]``."""
    settings = app.settings

    @app.command(
        option("--once", is_flag=True, default=False, help="Sync what can be synced, then exit."),
    )
    async def sync_memories(self: Any, once: bool) -> None:
        """Replay pending memories into SomaBrain, in order per tenant and agent, each once."""
        from sa01.pipeline.memory import MemorySync
        from sa01.providers.somabrain import SomaBrainClient

        if not settings.somabrain_url:
            _fail(RuntimeError("SA01_SOMABRAIN_URL is not set: there is no SomaBrain to sync to"))
        client = SomaBrainClient(settings, app.metrics)
        database = Database(settings)
        sync = MemorySync(settings, database, client)
        try:
            if once:
                total = 0
                while True:
                    synced, waiting = await sync.sync_once()
                    total += synced
                    if not waiting or not synced:
                        break
                print(json.dumps({"synced": total, "waiting": waiting}))
                if waiting:
                    _fail(
                        RuntimeError(
                            f"{waiting} memories still wait: SomaBrain at "
                            f"{redact_url(settings.somabrain_url or '')} did not take them "
                            "(see `faust -A streams status`)"
                        )
                    )
                return
            await sync.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        except ResilienceError as exc:
            _fail(exc)
        finally:
            await sync.stop()
            await client.close()


def register_storage_commands(app: StreamsApp) -> None:
    """``backup``: ask the backup agent to copy stored objects to the backup store."""
    settings = app.settings

    @app.command(
        argument("keys", nargs=-1, required=True),
        option("--tenant", required=True, help="The tenant whose objects KEYS name."),
        option("--task-id", default=None, help="Id of the task (default: a new UUID)."),
    )
    async def backup(self: Any, keys: tuple[str, ...], tenant: str, task_id: str | None) -> None:
        """Queue a backup of a tenant's stored objects KEYS on backup.tasks; print the
        task id. KEYS are relative to the tenant's prefix (``uploads/notes.txt``)."""
        from pydantic import ValidationError

        from sa01.core.topics import BACKUP_TASKS
        from schemas.messages import BackupTask

        try:
            task = BackupTask(
                task_id=task_id or str(uuid.uuid4()),
                tenant_id=tenant,
                storage_keys=keys,
                requested_by="faust -A streams backup",
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            _fail(ValueError(f"cannot back up {', '.join(keys)}: {problems}"))
        database = Database(settings)
        producer = ResilientProducer(settings, database, app.metrics)
        await database.open()
        await producer.start()
        try:
            result = await producer.send(
                message_record(settings.topic(BACKUP_TASKS), task.partition_key, task, task.task_id)
            )
        except ResilienceError as exc:
            _fail(exc)
        finally:
            await producer.stop()
            await database.close()
        print(task.task_id)
        print(
            f"backup of {len(keys)} object(s) queued ({result.path.value}); the backup agent "
            f"copies them to the {settings.backup_store} backup store",
            file=sys.stderr,
        )
