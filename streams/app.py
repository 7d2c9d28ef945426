"""The Faust app: :func:`create_app` builds it; ``faust -A streams worker`` runs it.

Guarantees:

* Importing this module (or any other) builds nothing, opens nothing and reads no
  environment. :func:`create_app` builds the app from the :class:`Settings` it is
  given and declares every agent, table, page, timer and command on it;
  :func:`app_from_environment` reads ``SA01_*`` first and exits with code 2 on a bad
  setting. ``streams.app`` (the attribute of the package, which ``faust -A streams``
  reads) calls it on first access.
* Topics are created by the project (the broker's auto-creation is off) before the
  consumer subscribes; values are taken as raw bytes and decoded by the pipeline so
  that a bad message is dead-lettered instead of stopping an agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

import faust
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent
from pydantic import ValidationError

from agents import conversation as conversation_agent
from agents import degradation as degradation_agent
from agents import memory as memory_agent
from agents import uploads as upload_agents
from sa01.core.errors import ConfigurationError, ResilienceError
from sa01.core.kafka_security import faust_credentials
from sa01.core.logging import apply_format, configure_logging, quiet_noisy_loggers
from sa01.core.metrics import Metrics
from sa01.core.redaction import describe_validation_error, install_log_redaction
from sa01.core.settings import Settings
from sa01.core.topics import BACKUP_TASKS, MEMORY_REMEMBER, UPLOAD_RETRY
from sa01.resilience.health import ServiceHealth
from streams import circuits, commands, dlq, timers, web
from streams.flow_control import ResumeOnceFlowControl
from streams.read_ahead import ReadAhead, ReadAheadConsumer
from streams.runtime import BACKUPS, CONVERSATION, DEGRADATION, MEMORY, UPLOADS, Runtime
from streams.web_guard import WebGuard
from tables import service_health

__all__ = [
    "EXIT_BAD_SETTINGS",
    "EXIT_FATAL",
    "EXIT_STOP_TIMEOUT",
    "StreamsApp",
    "StreamsWorker",
    "app_from_environment",
    "create_app",
]

#: The exit code of any command when a setting is invalid.
EXIT_BAD_SETTINGS = 2

#: The worker's exit code after lost infrastructure state (a dropped table or topic).
EXIT_FATAL = 3
#: The worker's exit code when a stop did not finish within SA01_SHUTDOWN_TIMEOUT_SECONDS.
EXIT_STOP_TIMEOUT = 4

logger = logging.getLogger(__name__)


class StreamsApp(faust.App):
    """The Faust app with the project's settings, metrics and runtime attached."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings.app_id, **kwargs)
        self.settings = settings
        self.metrics = Metrics()
        self.service_health = service_health.declare(self, settings.topic_partitions)
        self.runtime = Runtime(
            settings,
            self.metrics,
            is_leader=self.is_leader,
            table_rows=self.health_rows,
            on_fatal=self.stop_on_fatal,
        )
        # Background agents take at most their read-ahead; past it their topic waits.
        self.read_ahead: dict[str, ReadAhead] = {}
        for consumer, topic in (
            (MEMORY, MEMORY_REMEMBER),
            (UPLOADS, UPLOAD_RETRY),
            (BACKUPS, BACKUP_TASKS),
        ):
            read_ahead = ReadAhead(
                self,
                consumer,
                settings.topic(topic),
                self.metrics,
                high=settings.background_read_ahead,
                max_parked=settings.max_parked,
                max_parked_bytes=settings.max_parked_bytes,
            )
            self.read_ahead[consumer] = read_ahead
            self.runtime.consumers[consumer].on_held = read_ahead.update

    def stop_on_fatal(self, error: ConfigurationError) -> None:
        """Stop the worker as SIGTERM would (the runtime logged ``error`` once); it then
        exits with :data:`EXIT_FATAL`."""
        os.kill(os.getpid(), signal.SIGTERM)

    def health_rows(self) -> dict[str, ServiceHealth]:
        """The service_health table as ServiceHealth values."""
        return {
            str(name): service_health.health_from_row(row)
            for name, row in list(self.service_health.items())
            if row
        }

    def forget_memory_groups(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """On a rebalance: forget the (tenant, agent) pairs known to have no pending
        memories (another worker may have kept some while it owned their partition)."""
        self.runtime.memory_processor.clear_groups.clear()

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        """Faust's flow control of the agents' queues, resumed once per rebalance
        (streams.flow_control)."""
        return ResumeOnceFlowControl(loop=self.loop)

    def _new_consumer(self) -> Any:
        """Faust's consumer with O(1) gap tracking and read-ahead throttling
        (streams.gaps, streams.read_ahead)."""
        consumer = ReadAheadConsumer(
            self.transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=self.transport.loop,
        )
        consumer.background_topics = frozenset(r.topic for r in self.read_ahead.values())
        return consumer

    async def on_first_start(self) -> None:
        """Prepare topics, schema and pool before the consumer subscribes."""
        data_dir = Path(self.settings.data_dir)
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        await super().on_first_start()
        quiet_noisy_loggers()
        try:
            await self.runtime.start()
        except ResilienceError as exc:
            logger.error("worker cannot start", extra={"error": str(exc)})
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from exc

    async def on_stop(self) -> None:
        """Stop the runtime after the agents."""
        await super().on_stop()
        await self.runtime.stop()


def _exit_after_stop_bound(timeout: float) -> None:
    print(
        f"error: the worker did not stop within {timeout:g} s of the signal "
        f"(SA01_SHUTDOWN_TIMEOUT_SECONDS); exiting with code {EXIT_STOP_TIMEOUT}",
        file=sys.stderr,
        flush=True,
    )
    os._exit(EXIT_STOP_TIMEOUT)


class StreamsWorker(faust.Worker):
    """Faust's worker with a bounded stop and a non-zero exit after lost infrastructure.

    A signal arms a timer: a stop still running ``shutdown_timeout_seconds`` later ends
    the process with :data:`EXIT_STOP_TIMEOUT`, so SIGTERM always stops a worker.
    """

    _stop_bound: threading.Timer | None = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """Faust has replaced the root handlers: give them the configured log format."""
        super().on_setup_root_logger(logger, level)
        apply_format(root=logger)

    def _arm_stop_bound(self) -> None:
        if self._stop_bound is None:
            app = self.app
            timeout = app.settings.shutdown_timeout_seconds if isinstance(app, StreamsApp) else 30
            self._stop_bound = threading.Timer(timeout, _exit_after_stop_bound, (timeout,))
            self._stop_bound.daemon = True
            self._stop_bound.start()

    def _on_sigterm(self) -> None:
        self._arm_stop_bound()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_stop_bound()
        super()._on_sigint()

    def execute_from_commandline(self) -> NoReturn:
        """Run until stopped; exit with :data:`EXIT_FATAL` after lost infrastructure."""
        try:
            super().execute_from_commandline()
        except SystemExit:
            app = self.app
            if isinstance(app, StreamsApp) and app.runtime.fatal_error is not None:
                raise SystemExit(EXIT_FATAL) from None
            raise


def create_app(settings: Settings) -> StreamsApp:
    """The app for ``settings`` with every agent, table, page, timer and command declared.

    Installs log redaction and the log format of ``settings`` (process-wide, idempotent);
    opens no connection (the runtime connects when the worker starts).
    """
    install_log_redaction(settings)
    configure_logging(settings)
    brokers = [f"kafka://{host}" for host in settings.kafka_bootstrap_servers.split(",")]
    app = StreamsApp(
        settings,
        broker=brokers,
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=f"{settings.data_dir}/{settings.app_id}-data",
        autodiscover=False,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_application_options=WebGuard(settings).application_options(),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        consumer_group_instance_id=settings.worker_instance_id,
        broker_commit_interval=1.0,
        broker_max_poll_records=settings.fetch_max_records,
        producer_acks=-1,
        stream_wait_empty=True,
        Worker=StreamsWorker,
    )
    # The worker's role (SA01_WORKER_ROLE) picks the agents, so the topics it subscribes
    # to: workers of several roles in one group split the work by topic (Faust's assignor
    # groups topics by the members subscribed to them). Every role declares the
    # service_health GlobalTable, so every member reads all of it whoever leads the group.
    if settings.answers_replies:
        conversation_agent.register(app, CONVERSATION)
        degradation_agent.register(app, DEGRADATION)
    if settings.runs_background:
        memory_agent.register(app, MEMORY)
        app.on_partitions_revoked.connect(app.forget_memory_groups)
        app.on_partitions_assigned.connect(app.forget_memory_groups)
        upload_agents.register(app, UPLOADS, BACKUPS)
    timers.register(app)
    web.register(app)
    commands.register(app)
    commands.register_operator_commands(app)
    dlq.register(app)
    circuits.register(app)
    commands.register_memory_command(app)
    commands.register_storage_commands(app)
    return app


def app_from_environment() -> StreamsApp:
    """:func:`create_app` for the ``SA01_*`` environment; a bad setting prints one line
    (without its value: it may be a secret) and exits with :data:`EXIT_BAD_SETTINGS`."""
    try:
        return create_app(Settings.load())
    except ValidationError as exc:
        print(f"error: invalid settings: {describe_validation_error(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_SETTINGS) from None
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_SETTINGS) from None
