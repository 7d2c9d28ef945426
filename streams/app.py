"""The Faust app: ``faust -A streams worker``.

Topics are created by the project (the broker's auto-creation is off) before the
consumer subscribes; values are taken as raw bytes and decoded by the pipeline so
that a bad message is dead-lettered instead of stopping an agent.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import faust

from core.errors import ResilienceError
from core.kafka_security import faust_credentials
from core.logging import quiet_noisy_loggers
from core.metrics import Metrics
from core.redaction import install_log_redaction
from core.settings import Settings
from resilience.health import ServiceHealth
from streams.runtime import Runtime
from streams.web_guard import WebGuard
from tables import service_health

__all__ = ["StreamsApp", "create_app"]

logger = logging.getLogger(__name__)


class StreamsApp(faust.App):
    """The Faust app with the project's settings, metrics and runtime attached."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings.app_id, **kwargs)
        self.settings = settings
        self.metrics = Metrics()
        self.service_health = service_health.declare(self, settings.topic_partitions)
        self.runtime = Runtime(
            settings, self.metrics, is_leader=self.is_leader, table_rows=self.health_rows
        )

    def health_rows(self) -> dict[str, ServiceHealth]:
        """The service_health table as ServiceHealth values."""
        return {
            str(name): service_health.health_from_row(row)
            for name, row in list(self.service_health.items())
            if row
        }

    async def on_first_start(self) -> None:
        """Prepare topics, schema and pool before the consumer subscribes."""
        data_dir = Path(self.settings.data_dir)
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        await super().on_first_start()
        quiet_noisy_loggers()
        try:
            await self.runtime.start()
        except ResilienceError as exc:
            logger.error("worker cannot start: %s", exc)
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from exc

    async def on_stop(self) -> None:
        """Stop the runtime after the agents."""
        await super().on_stop()
        await self.runtime.stop()


def create_app(settings: Settings | None = None) -> StreamsApp:
    """Build the app from ``settings`` (default: the environment)."""
    settings = settings or Settings.load()
    install_log_redaction(settings)
    brokers = [f"kafka://{host}" for host in settings.kafka_bootstrap_servers.split(",")]
    return StreamsApp(
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
        producer_acks=-1,
        stream_wait_empty=True,
    )
