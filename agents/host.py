"""What an agent needs from the app that declares it, as protocols.

Guarantees: importing this module does no I/O; an app satisfies :class:`AgentHost`
by its shape (``streams.app.StreamsApp`` does), so agents depend on the pipeline's
types, never on ``streams``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from faust.types import AgentT, TopicT
from faust.types.agents import AgentFun

from sa01.core.settings import Settings
from sa01.pipeline.consuming import LanedConsumer, RecordGuard
from sa01.pipeline.dead_lettering import InboundMessage

__all__ = ["AgentHost", "AgentRuntime", "inbound_message", "raw_topic"]


class AgentRuntime(Protocol):
    """The worker's runtime as the agents use it."""

    @property
    def consumers(self) -> Mapping[str, LanedConsumer]:
        """The laned consumer of each agent, by agent name."""
        ...

    @property
    def degradation_guard(self) -> RecordGuard:
        """The guard of the degradation agent (one event at a time)."""
        ...

    async def submit(self, message: InboundMessage, partition: Any, ack: Any) -> None:
        """Queue a ``conversation.inbound`` record on its session's lane."""
        ...


class AgentHost(Protocol):
    """A Faust app with the project's settings, runtime and health table."""

    @property
    def settings(self) -> Settings:
        """The app's settings."""
        ...

    @property
    def runtime(self) -> AgentRuntime:
        """The worker's runtime."""
        ...

    @property
    def service_health(self) -> Any:
        """The ``service_health`` GlobalTable (a Faust table: untyped)."""
        ...

    def topic(
        self, *topics: str, key_serializer: str, value_serializer: str, partitions: int
    ) -> TopicT:
        """Faust's ``App.topic``."""
        ...

    def agent(self, channel: TopicT, *, name: str) -> Callable[[AgentFun[Any]], AgentT[Any]]:
        """Faust's ``App.agent`` decorator."""
        ...


def inbound_message(message: Any) -> InboundMessage:
    """The pipeline's view of a Faust ``Message`` (a third-party object: untyped)."""
    return InboundMessage(
        message.topic, message.partition, message.offset, message.key, message.value
    )


def raw_topic(app: AgentHost, name: str) -> TopicT:
    """The project topic ``name`` (prefixed by the settings) with raw keys and values."""
    return app.topic(
        app.settings.topic(name),
        key_serializer="raw",
        value_serializer="raw",
        partitions=app.settings.topic_partitions,
    )
