"""The conversation journey: answer one inbound message."""

from __future__ import annotations

from collections.abc import Callable

from providers.responder import Responder
from resilience.health import DegradationStatus
from schemas.messages import ConversationInbound, ConversationReply, ServiceState, reply_id_for

__all__ = ["ConversationJourney"]


class ConversationJourney:
    """Turns a :class:`ConversationInbound` into its :class:`ConversationReply`."""

    #: Services whose trouble the reply reports in ``degraded``.
    DEPENDENCIES = ("llm", "somabrain", "kafka", "redis")

    def __init__(
        self, responder: Responder, status: Callable[[], DegradationStatus] | None = None
    ) -> None:
        self.responder = responder
        self.status = status

    def degraded_services(self) -> tuple[str, ...]:
        """The journey's dependencies that are not healthy right now."""
        if self.status is None:
            return ()
        status = self.status()
        return tuple(
            name for name in self.DEPENDENCIES if status.state(name) is not ServiceState.HEALTHY
        )

    async def answer(self, inbound: ConversationInbound) -> ConversationReply:
        """The reply to ``inbound``; its id is derived from the inbound id.

        Reads the degradation status first (the seed's reusable pattern) and reports
        the dependencies in fallback in the reply's ``degraded``.
        """
        degraded = self.degraded_services()
        answer = await self.responder.respond(inbound.text, session_key=inbound.partition_key)
        return ConversationReply(
            message_id=reply_id_for(inbound.message_id),
            in_reply_to=inbound.message_id,
            tenant_id=inbound.tenant_id,
            session_id=inbound.session_id,
            text=answer.text,
            model=answer.model,
            degraded=degraded,
        )
