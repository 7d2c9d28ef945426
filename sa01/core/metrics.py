"""Every Prometheus metric of the project, in one container built from a registry.

Tests build a fresh :class:`Metrics` on a fresh registry; ``/metrics`` serves the
registry the container was built from. Names from the seed are kept exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["BreakerGauges", "Metrics"]


class BreakerGauges(Protocol):
    """What the metrics read of the breaker registry (``sa01.resilience.registry``)."""

    def gauge_values(self) -> Mapping[str, int]:
        """The ``circuit_breaker_state`` value of every registered breaker, by name."""
        ...


class Metrics:
    """The project's metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._breakers: BreakerGauges | None = None
        r = self.registry
        # --- the seed's names -------------------------------------------------
        self.service_health_state = Gauge(
            "service_health_state",
            "Health of a service: 0 healthy, 1 degraded, 2 unavailable.",
            ["service"],
            registry=r,
        )
        self.service_degradation_level = Gauge(
            "service_degradation_level",
            "Degradation level: 0 none, 1 minor, 2 moderate, 3 severe, 4 critical.",
            ["service"],
            registry=r,
        )
        self.outbox_messages_pending = Gauge(
            "outbox_messages_pending", "Outbox rows not yet published.", registry=r
        )
        self.dlq_messages_total = Counter(
            "dlq_messages", "Messages sent to a dead-letter topic.", ["topic"], registry=r
        )
        self.llm_failover_count = Counter(
            "llm_failover_count",
            "Switches from one LLM provider to the next.",
            ["from_provider", "to_provider"],
            registry=r,
        )
        self.cascading_failures_total = Counter(
            "cascading_failures",
            "Services marked degraded because a dependency is down.",
            ["service", "dependency"],
            registry=r,
        )
        self.degradation_events_total = Counter(
            "degradation_events",
            "Health state changes emitted to degradation.events.",
            ["service", "state"],
            registry=r,
        )
        self.probe_seconds = Histogram(
            "health_probe_seconds",
            "Duration of one health probe.",
            ["service"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        # --- circuit breakers --------------------------------------------------
        self.circuit_breaker_state = Gauge(
            "circuit_breaker_state",
            "Breaker state: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled.",
            ["name"],
            registry=r,
        )
        self.circuit_breaker_calls_total = Counter(
            "circuit_breaker_calls",
            "Calls through a breaker by outcome (success, failure, slow_success, "
            "slow_failure, ignored, rejected).",
            ["name", "outcome"],
            registry=r,
        )
        self.circuit_breaker_transitions_total = Counter(
            "circuit_breaker_transitions",
            "Breaker state transitions.",
            ["name", "from_state", "to_state"],
            registry=r,
        )
        # --- the conversation agent ------------------------------------------
        self.messages_processed_total = Counter(
            "conversation_messages",
            "Inbound messages by outcome (replied, degraded, duplicate, dead_lettered).",
            ["outcome"],
            registry=r,
        )
        self.processing_seconds = Histogram(
            "conversation_processing_seconds",
            "Time from taking an inbound message to committing its reply.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.infrastructure_retries_total = Counter(
            "conversation_infrastructure_retries",
            "Retries of a message because a dependency was unavailable.",
            ["service"],
            registry=r,
        )
        self.messages_in_flight = Gauge(
            "conversation_messages_in_flight", "Inbound messages being processed.", registry=r
        )
        # --- the outbox relay -------------------------------------------------
        self.outbox_published_total = Counter(
            "outbox_published", "Outbox rows published to Kafka.", registry=r
        )
        self.outbox_failed_total = Counter(
            "outbox_publish_failures",
            "Outbox rows whose publication failed, by kind (row, broker).",
            ["kind"],
            registry=r,
        )
        self.outbox_relay_lag_seconds = Gauge(
            "outbox_relay_lag_seconds", "Age of the oldest unpublished outbox row.", registry=r
        )
        self.outbox_relay_active = Gauge(
            "outbox_relay_active", "1 while this process holds the relay lock.", registry=r
        )
        self.outbox_batch_size = Histogram(
            "outbox_batch_size",
            "Rows per relay transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )

        self.outbox_commit_batch_size = Histogram(
            "outbox_commit_batch_size",
            "Answered messages per PostgreSQL transaction of the conversation agent.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.outbox_commit_fallbacks_total = Counter(
            "outbox_commit_fallbacks",
            "Group commits that failed and were committed again message by message.",
            registry=r,
        )
        self.idempotency_lookup_batch_size = Histogram(
            "idempotency_lookup_batch_size",
            "Idempotency keys per lookup of the conversation agent.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )

        # --- audio and storage ------------------------------------------------
        self.provider_failover_count = Counter(
            "provider_failover_count",
            "Switches from one audio or storage provider to the next.",
            ["chain", "from_provider", "to_provider"],
            registry=r,
        )
        self.voice_messages_total = Counter(
            "voice_messages",
            "Voice exchanges by the STT and TTS links that served them.",
            ["stt_provider", "tts_provider"],
            registry=r,
        )
        self.caller_errors_total = Counter(
            "caller_errors",
            "Messages answered with a notice because the message itself was refused "
            "(never counted against a provider's circuit), by error class.",
            ["kind"],
            registry=r,
        )
        self.lane_parked_messages = Gauge(
            "lane_parked_messages",
            "Messages held back because their session or tenant already uses its share "
            "of the in-flight slots (their partition is paused meanwhile).",
            registry=r,
        )
        self.uploads_total = Counter(
            "uploads",
            "Attachments by outcome: primary, temporary (a fallback store), queued, refused.",
            ["outcome"],
            registry=r,
        )
        self.upload_tasks_total = Counter(
            "upload_tasks",
            "upload.retry tasks by outcome: stored, promoted, dead_lettered.",
            ["outcome"],
            registry=r,
        )
        self.upload_task_attempts_total = Counter(
            "upload_task_attempts", "Failed attempts of upload.retry tasks.", registry=r
        )
        self.backup_task_attempts_total = Counter(
            "backup_task_attempts", "Failed attempts of backup.tasks tasks.", registry=r
        )
        self.backup_objects_total = Counter(
            "backup_objects",
            "Objects handled by backup.tasks, by outcome: copied, missing.",
            ["outcome"],
            registry=r,
        )
        # --- every consumer (agent) and its backlog -----------------------------
        self.consumer_records_total = Counter(
            "consumer_records",
            "Records finished by each agent (conversation, memory, uploads, backups,"
            " degradation), by outcome; dead_lettered is the failed count.",
            ["consumer", "outcome"],
            registry=r,
        )
        self.consumer_record_failures_total = Counter(
            "consumer_record_failures",
            "Failed attempts at a record, by agent (retried or then dead-lettered).",
            ["consumer"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "consumer_lag",
            "Records of a partition this worker owns not yet committed by its group"
            " (high watermark minus committed offset; a transaction's last marker counts 1).",
            ["consumer", "topic", "partition"],
            registry=r,
        )
        self.consumer_records_in_flight = Gauge(
            "consumer_records_in_flight",
            "Records taken by an agent and not finished.",
            ["consumer"],
            registry=r,
        )
        self.consumer_fetch_paused = Gauge(
            "consumer_fetch_paused",
            "1 while a background agent's topic is left out of the fetch: the agent holds its"
            " read-ahead (SA01_BACKGROUND_READ_AHEAD records) and takes more once half are done.",
            ["consumer"],
            registry=r,
        )
        self.memory_pending_rows = Gauge(
            "memory_pending_rows",
            "Rows of pending_memory not yet replayed into SomaBrain.",
            registry=r,
        )
        self.background_slots_in_use = Gauge(
            "background_slots_in_use",
            "Background records holding a slot of the background share.",
            registry=r,
        )
        self.worker_role = Gauge(
            "worker_role",
            "1 for the role this worker runs (SA01_WORKER_ROLE: all, replies, background).",
            ["role"],
            registry=r,
        )

    def read_breakers(self, breakers: BreakerGauges) -> None:
        """Serve ``circuit_breaker_state`` from ``breakers`` (the runtime's registry).

        From then on every :meth:`render` sets the gauge to exactly the registered
        breakers' states, read at that moment, so ``/metrics`` lists the same circuits
        as ``/circuits`` and an ``open`` whose wait is over reads ``half_open``.
        """
        self._breakers = breakers

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        breakers = self._breakers
        if breakers is not None:
            values = breakers.gauge_values()
            self.circuit_breaker_state.clear()
            for name, value in values.items():
                self.circuit_breaker_state.labels(name=name).set(value)
        return generate_latest(self.registry)
