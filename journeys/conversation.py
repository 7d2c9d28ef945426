"""The conversation journey: answer one inbound message."""

from __future__ import annotations

from providers.responder import Responder
from schemas.messages import ConversationInbound, ConversationReply, reply_id_for

__all__ = ["ConversationJourney"]


class ConversationJourney:
    """Turns a :class:`ConversationInbound` into its :class:`ConversationReply`."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder

    async def answer(self, inbound: ConversationInbound) -> ConversationReply:
        """The reply to ``inbound``; its id is derived from the inbound id."""
        answer = await self.responder.respond(inbound.text, session_key=inbound.partition_key)
        return ConversationReply(
            message_id=reply_id_for(inbound.message_id),
            in_reply_to=inbound.message_id,
            tenant_id=inbound.tenant_id,
            session_id=inbound.session_id,
            text=answer.text,
            model=answer.model,
        )
