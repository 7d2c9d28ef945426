"""What the worker builds at start-up and tears down at stop.

The pieces (database pool, relay, resilient producer, monitor, processor, lanes) are
plain objects from the Faust-agnostic packages; the app holds one :class:`Runtime`
and the agents, pages and timers use it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import mode

from sa01.core.errors import ConfigurationError, InfrastructureUnavailableError
from sa01.core.heap import freeze_startup_heap
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.core.topics import (
    BACKUP_TASKS,
    CONVERSATION_INBOUND,
    DEGRADATION_EVENTS,
    MEMORY_REMEMBER,
    UPLOAD_RETRY,
    ensure_topics,
)
from sa01.journeys.attachments import AttachmentStorer
from sa01.journeys.conversation import ConversationJourney
from sa01.journeys.session_context import SessionContext
from sa01.journeys.voice import VoiceJourney
from sa01.outbox.database import Database
from sa01.outbox.migrate import applied_versions, available_migrations
from sa01.outbox.producer import PRODUCER_GATE, ResilientProducer
from sa01.outbox.relay import OutboxRelay
from sa01.outbox.store import OutboxStore
from sa01.pipeline.consuming import LanedConsumer, RecordGuard
from sa01.pipeline.conversation import ConversationProcessor
from sa01.pipeline.dead_lettering import DeadLetterWriter, InboundMessage
from sa01.pipeline.deferred_answers import DeferredAnswerer
from sa01.pipeline.memory import MemoryProcessor, MemorySync
from sa01.pipeline.ordering import SessionLanes
from sa01.pipeline.priority import BackgroundShare
from sa01.pipeline.records import message_record
from sa01.pipeline.upload_tasks import BackupProcessor, UploadProcessor
from sa01.providers.audio import build_audio_chains
from sa01.providers.health import multimodal_probes, multimodal_specs
from sa01.providers.llm_chain import build_responder_chain
from sa01.providers.responder import missing_key_notice
from sa01.providers.somabrain import SomaBrainClient
from sa01.providers.somabrain_health import SomaBrainProbe
from sa01.providers.storage import build_storage_chain, build_store
from sa01.resilience.fallback import FallbackChain
from sa01.resilience.health import DEFAULT_SERVICES, DegradationStatus, ServiceHealth, latest
from sa01.resilience.monitor import DegradationMonitor
from sa01.resilience.probes import BreakerProbe, default_probes
from sa01.resilience.registry import BreakerRegistry
from schemas.messages import DegradationEvent
from streams.backlog import BacklogMonitor
from streams.lifecycle import Component

__all__ = [
    "BACKUPS",
    "CONVERSATION",
    "DEGRADATION",
    "LLM_PREFIX",
    "MEMORY",
    "UPLOADS",
    "Runtime",
    "check_schema",
]

#: Records a background agent may hold beyond its read-ahead: its stream must never block
#: (Faust fetches every topic with one consumer, and a blocked stream stops the fetch of
#: all of them, replies included). The app stops fetching the agent's topic at the
#: read-ahead (``streams.read_ahead``), so only what was already fetched (one batch of at
#: most ``SA01_FETCH_MAX_RECORDS``) comes on top.
FETCH_SLACK = 10_000

#: How old the service_health table's view in :meth:`Runtime.status` may be.
CLUSTER_VIEW_MAX_AGE_SECONDS = 0.1

#: Consumer (agent) names: the ``consumer`` label of the consumer metrics.
CONVERSATION = "conversation"
MEMORY = "memory"
UPLOADS = "uploads"
BACKUPS = "backups"
DEGRADATION = "degradation"

logger = logging.getLogger(__name__)


async def check_schema(settings: Settings) -> None:
    """Fail clearly when the database lacks migrations this code needs."""
    applied = await applied_versions(settings)
    missing = [m for m in available_migrations() if m.version not in applied]
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise ConfigurationError(
            f"schema {settings.database_schema!r} lacks migrations {names}: "
            "run `faust -A streams migrate` (or `make run`)"
        )


#: The LLM breakers' names begin with this (``llm:<model>``).
LLM_PREFIX = "llm:"


#: Where a tenant id ends in a record key (tenant ids hold neither character).
_TENANT_END = re.compile(rb"[:/]")


def lane_group(message: InboundMessage) -> bytes | None:
    """The tenant of a record, from its key: ``tenant:session`` (conversation),
    ``tenant:agent`` (memory), ``tenant/message/attachment`` (upload task) or
    ``tenant:task`` (backup task). A key without either separator is its own group."""
    if message.key is None:
        return None
    return _TENANT_END.split(message.key, maxsplit=1)[0]


class Runtime(mode.Service):
    """The worker's resources, a ``mode.Service`` whose children are its parts
    (:meth:`on_init_dependencies`); constructing it does no I/O."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        table_rows: Callable[[], Mapping[str, ServiceHealth]] = dict,
        on_fatal: Callable[[ConfigurationError], None] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.metrics = metrics
        metrics.worker_role.labels(role=settings.worker_role).set(1)
        self.table_rows = table_rows
        self._cluster_view_cache: dict[str, ServiceHealth] | None = None
        self._cluster_view_read_at = 0.0
        self.on_fatal = on_fatal
        self.fatal_error: ConfigurationError | None = None
        self.database = Database(settings, on_schema_missing=self.fatal)
        self.relay = OutboxRelay(settings, self.database, metrics)
        self.producer = ResilientProducer(
            settings, self.database, metrics, on_outbox_write=self.relay.wake
        )
        self.llm = build_responder_chain(settings, metrics)
        responder = self.llm.responder
        self.responder = responder
        self.storage = build_storage_chain(settings, metrics)
        self.audio = build_audio_chains(settings, metrics)
        self.somabrain = SomaBrainClient(settings, metrics)
        self.breakers = self._register_breakers()
        metrics.read_breakers(self.breakers)
        probes = default_probes(settings, SomaBrainProbe(settings, self.somabrain.health))
        if any(name.startswith(LLM_PREFIX) for name in self.breakers):
            probes.append(BreakerProbe(settings, "llm", lambda: self.breakers.states(LLM_PREFIX)))
        probes += multimodal_probes(settings, self.audio, self.storage)
        self.monitor = DegradationMonitor(
            probes,
            (*DEFAULT_SERVICES, *multimodal_specs(self.audio, self.storage)),
            metrics,
            publish=self.publish_degradation,
            should_publish=is_leader,
            source=settings.worker_instance_id or settings.app_id,
            breakers=self.breakers,
            trips={"kafka": PRODUCER_GATE},
        )
        self.dead_letters = DeadLetterWriter(settings, self.database, metrics)
        self.outbox = OutboxStore()
        self.session_context = SessionContext(settings)
        journey = ConversationJourney(
            responder,
            self.status,
            memory=self.somabrain if settings.memory_active else None,
            session=self.session_context,
            voice=VoiceJourney(self.audio, self.storage, metrics),
        )
        self.processor = ConversationProcessor(
            settings,
            self.database,
            journey,
            metrics,
            on_committed=self.relay.wake,
            attachments=AttachmentStorer(settings, self.storage, metrics),
        )
        self.ready = asyncio.Event()
        self.status_ready = asyncio.Event()
        self.share = BackgroundShare(
            settings.background_max_in_flight,
            settings.background_max_in_flight_busy,
            max_lag_seconds=settings.background_max_loop_lag_seconds,
        )
        self.upload_processor = UploadProcessor(
            settings, self.storage, self.guard(UPLOADS), metrics, self.share
        )
        self.backup_processor = BackupProcessor(
            settings,
            self.storage,
            build_store(settings, settings.backup_store, backup=True),
            self.guard(BACKUPS),
            metrics,
            self.share,
        )
        self.memory_processor = MemoryProcessor(settings, self.database, self.somabrain, metrics)
        self.memory_sync = MemorySync(
            settings, self.database, self.somabrain, self.share, metrics, self.dead_letters
        )
        self.deferred_answers = DeferredAnswerer(
            settings, self.database, journey, self.dead_letters, on_committed=self.relay.wake
        )
        # Fair lanes: a session holds one slot (the message it answers), a tenant at most
        # its share of the slots; their further messages are parked, holding no slot,
        # while the agent reads on.
        conversation_lanes = SessionLanes(
            settings.max_in_flight,
            lane_slots=1,
            group_share=settings.tenant_max_share,
            max_bytes=settings.max_in_flight_bytes,
            max_parked=settings.max_parked,
            max_parked_bytes=settings.max_parked_bytes,
            on_parked=metrics.lane_parked_messages.set,
        )
        self.consumers: dict[str, LanedConsumer] = {
            CONVERSATION: LanedConsumer(
                self.guard(CONVERSATION),
                self.processor.process,
                settings.max_in_flight,
                self.ready,
                share=self.share,
                foreground=True,
                lanes=conversation_lanes,
                group_of=lane_group,
            ),
            MEMORY: LanedConsumer(
                self.guard(MEMORY),
                self.memory_processor.process,
                settings.background_read_ahead + FETCH_SLACK,
                self.ready,
                share=self.share,
                lanes=self._background_lanes(),
                group_of=lane_group,
            ),
            # Upload and backup tasks may wait long for a store: each record its own lane,
            # a tenant at most its share of the read-ahead (the rest parked), and each
            # attempt (not the wait between attempts) takes a background slot.
            UPLOADS: self._waiting_tasks(UPLOADS, self.upload_processor.process),
            BACKUPS: self._waiting_tasks(BACKUPS, self.backup_processor.process),
        }
        self.degradation_guard = self.guard(DEGRADATION)
        self.backlog = BacklogMonitor(
            metrics,
            {
                settings.topic(CONVERSATION_INBOUND): CONVERSATION,
                settings.topic(MEMORY_REMEMBER): MEMORY,
                settings.topic(UPLOAD_RETRY): UPLOADS,
                settings.topic(BACKUP_TASKS): BACKUPS,
                settings.topic(DEGRADATION_EVENTS): DEGRADATION,
            },
            lambda name: self.consumers[name].in_flight if name in self.consumers else 0,
        )

    def guard(self, consumer: str) -> RecordGuard:
        """A :class:`RecordGuard` for ``consumer`` (dead letters wake the relay)."""
        return RecordGuard(
            consumer, self.settings, self.dead_letters, self.metrics, self.relay.wake, self.ready
        )

    def _background_lanes(self) -> SessionLanes:
        """A background agent's lanes: as the conversation's, one (tenant, agent) pair or
        tenant holds at most its share of the read-ahead and its further records are
        parked, so one tenant's backlog does not hold the others' records behind it. The
        slots and the parking room go past the read-ahead and SA01_MAX_PARKED by
        FETCH_SLACK, so that submit never waits: the app stops fetching the topic at
        those bounds instead (streams.read_ahead)."""
        settings = self.settings
        return SessionLanes(
            settings.background_read_ahead + FETCH_SLACK,
            lane_share=settings.background_lane_max_share,
            group_share=settings.tenant_max_share,
            share_base=settings.background_read_ahead,
            max_parked=settings.max_parked + FETCH_SLACK,
        )

    def _waiting_tasks(
        self, consumer: str, handle: Callable[[InboundMessage], Awaitable[str]]
    ) -> LanedConsumer:
        bound = self.settings.background_read_ahead + FETCH_SLACK
        return LanedConsumer(
            self.guard(consumer),
            handle,
            bound,
            self.ready,
            lanes=self._background_lanes(),
            group_of=lane_group,
        )

    @property
    def lanes(self) -> SessionLanes:
        """The conversation agent's lanes."""
        return self.consumers[CONVERSATION].lanes

    def on_init_dependencies(self) -> Iterable[mode.ServiceT]:
        """The parts, in start order; mode stops them in the reverse order.

        Closed last: the pool and the clients (SomaBrain, Redis, stores, audio, LLM);
        then the producer, the background share and the singleton jobs (relay, memory
        sync, delayed answers) stop before them. The monitor joins at
        :meth:`start_monitor`, so it stops first; the lanes and the group committer stop
        in :meth:`on_stop`, before any child.
        """
        settings = self.settings
        parts = [
            Component("database", start=self.database.open, stop=self.database.close),
            Component("somabrain", stop=self.somabrain.close),
            Component("session context", stop=self.session_context.close),
            Component("storage", stop=self.storage.close),
            Component("backup store", stop=self.backup_processor.backup.close),
            Component("llm clients", stop=self.llm.aclose),
            Component("audio", start=self.audio.start, stop=self.audio.close),
            Component("producer", start=self.producer.start, stop=self.producer.stop),
            Component("background share", start=self.share.start, stop=self.share.stop),
        ]
        if settings.relay_enabled_in_worker:
            parts.append(Component("relay", start=self.relay.start, stop=self.relay.stop))
        if settings.memory_active and settings.runs_background:
            sync = self.memory_sync
            parts.append(Component("memory sync", start=sync.start, stop=sync.stop))
        if settings.llm_degraded_reply and settings.answers_replies:
            owed = self.deferred_answers
            parts.append(Component("delayed answers", start=owed.start, stop=owed.stop))
        return parts

    async def on_first_start(self) -> None:
        """Create the topics and check the schema before any part starts."""
        await ensure_topics(self.settings)
        await check_schema(self.settings)

    async def on_started(self) -> None:
        """Every part is up: take messages."""
        notice = missing_key_notice(self.settings)
        if notice:
            logger.warning(notice)
        freeze_startup_heap()
        self.ready.set()
        settings = self.settings
        if settings.answers_replies:
            work = (
                f"answering {settings.topic(CONVERSATION_INBOUND)} on "
                f"{settings.topic('conversation.outbound')}"
            )
        else:
            work = "background work (memories, upload and backup tasks, the memory sync)"
        logger.info(
            "worker ready: %s; http://%s:%d/health /status /metrics",
            work,
            settings.web_host,
            settings.web_port,
            extra={"role": settings.worker_role},
        )
        if settings.worker_role == "background" and settings.background_nice:
            os.nice(settings.background_nice)
            logger.info("background worker niceness raised by %d", settings.background_nice)

    async def start_monitor(self, unfolded: Mapping[str, ServiceHealth]) -> None:
        """Seed the monitor from the recovered table and the events not folded into it
        yet (``unfolded``), then start probing. Seeded so, the first probe of a service
        in the state already known is no change: no event, and ``since`` stays."""
        known = dict(self.table_rows())
        for name, health in unfolded.items():
            known[name] = latest(known.get(name), health)
        self.monitor.seed(known)
        monitor = Component("monitor", start=self.monitor.start, stop=self.monitor.stop)
        await self.add_runtime_dependency(monitor)
        self.status_ready.set()

    async def on_stop(self) -> None:
        """Stop taking messages: cancel the lanes, finish the pending group commits; the
        children stop after this, in the reverse of their start order."""
        self.ready.clear()
        for consumer in self.consumers.values():
            await consumer.cancel()
        await self.processor.close()

    def fatal(self, error: ConfigurationError) -> None:
        """Lost infrastructure state (tables, topics): report it once and stop the worker.

        Failing every message instead would spin, log without end and ack nothing.
        """
        if self.fatal_error is not None:
            return
        self.fatal_error = error
        logger.error("the worker stops: %s", error)
        if self.on_fatal is not None:
            self.on_fatal(error)

    def _register_breakers(self) -> BreakerRegistry:
        """The registry of every breaker of this worker: the producer's Kafka gate, the
        LLM models, audio, storage and SomaBrain. The one place that finds them."""
        registry = BreakerRegistry()
        found = [self.producer.gate, self.somabrain.breaker]
        chains: list[FallbackChain[Any]] = [self.audio.tts, self.audio.stt, self.storage.chain]
        for chain in chains:
            found += [link.breaker for link in chain.links]
        found += list(self.llm.breakers.values())
        for breaker in found:
            registry.register(breaker.name, breaker)
        return registry

    def status(self) -> DegradationStatus:
        """The table's cluster view (read at most ``CLUSTER_VIEW_MAX_AGE_SECONDS`` ago)
        overlaid with this worker's newer observations."""
        merged = dict(self._cluster_view())
        for name, health in self.monitor.observed().items():
            merged[name] = latest(merged.get(name), health)
        return DegradationStatus(merged, self.monitor.specs)

    def _cluster_view(self) -> Mapping[str, ServiceHealth]:
        # Every reply reads the status; decoding the table's rows for each one cost 5% of
        # the worker's CPU in a burst. The table changes by degradation events, seconds
        # apart, and this worker's own observations are overlaid fresh.
        now = time.monotonic()
        if self._cluster_view_cache is None or now - self._cluster_view_read_at >= (
            CLUSTER_VIEW_MAX_AGE_SECONDS
        ):
            self._cluster_view_cache = dict(self.table_rows())
            self._cluster_view_read_at = now
        return self._cluster_view_cache

    async def publish_degradation(self, event: DegradationEvent) -> None:
        """Emit ``event`` exactly once: through the outbox and the relay while PostgreSQL
        answers, else straight to Kafka through the resilient producer."""
        record = message_record(
            self.settings.topic(DEGRADATION_EVENTS), event.service, event, event.event_id
        )
        try:
            async with self.database.connection() as conn:
                await self.outbox.add(conn, record, self.settings.outbox_max_attempts)
            self.relay.wake()
        except InfrastructureUnavailableError:
            await self.producer.send(record)

    async def submit(self, message: InboundMessage, partition: Any, ack: Any) -> None:
        """Queue a ``conversation.inbound`` record on its session's lane."""
        await self.consumers[CONVERSATION].submit(message, partition, ack)
