"""The conversation journey: answer one inbound message (the seed's reusable pattern).

1. Read the degradation status.
2. Context: with SomaBrain available, recall memories; otherwise (or when the recall
   fails) use the session's recent turns from Redis, and say ``degraded: ["somabrain"]``.
3. Ask the responder (the LLM fallback chain).
4. The memory of the exchange is returned by :meth:`memory_for`; the processor stores it
   with the reply, in one transaction, for the memory agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sa01.core.errors import CallerError, RequestTooLongError, TransientError
from sa01.journeys.session_context import SessionContext
from sa01.journeys.voice import VoiceJourney
from sa01.providers.responder import Responder
from sa01.providers.somabrain import SomaBrainClient
from sa01.resilience.health import DegradationStatus
from schemas.messages import (
    ConversationInbound,
    ConversationReply,
    MemoryRecord,
    ServiceState,
    reply_id_for,
    scoped_key,
    storable_text,
)

__all__ = ["ConversationJourney"]

logger = logging.getLogger(__name__)


class ConversationJourney:
    """Turns a :class:`ConversationInbound` into its :class:`ConversationReply`."""

    #: Services whose trouble the reply reports in ``degraded``.
    DEPENDENCIES = ("llm", "somabrain", "kafka", "redis")

    def __init__(
        self,
        responder: Responder,
        status: Callable[[], DegradationStatus] | None = None,
        *,
        memory: SomaBrainClient | None = None,
        session: SessionContext | None = None,
        voice: VoiceJourney | None = None,
    ) -> None:
        self.responder = responder
        self.status = status
        self.memory = memory
        self.session = session
        self.voice = voice

    def degraded_services(self) -> list[str]:
        """The journey's dependencies that are not healthy right now."""
        if self.status is None:
            return []
        status = self.status()
        fine = (ServiceState.HEALTHY, ServiceState.NOT_CONFIGURED)
        return [name for name in self.DEPENDENCIES if status.state(name) not in fine]

    async def _context(
        self, inbound: ConversationInbound, degraded: list[str], text: str
    ) -> list[str]:
        if self.memory is not None and "somabrain" not in degraded:
            try:
                recalled = await self.memory.recall(inbound.tenant_id, text)
                return [m.content for m in recalled]
            except TransientError as exc:
                logger.info("recall failed, using session context", extra={"error": str(exc)})
                degraded.append("somabrain")
        if self.session is None:
            return []
        try:
            return await self.session.recent(inbound.partition_key)
        except TransientError:
            if "redis" not in degraded:
                degraded.append("redis")
            return []

    async def answer(
        self, inbound: ConversationInbound, *, reply_id: str | None = None
    ) -> ConversationReply:
        """The reply to ``inbound``; its id is derived from the inbound id by default.

        A voice message is transcribed first and its reply spoken (see
        :mod:`sa01.journeys.voice`); without a voice journey its ``text`` is answered.
        """
        reply_id = reply_id or reply_id_for(inbound.tenant_id, inbound.message_id)
        transcript = None
        text = inbound.text
        if inbound.voice and self.voice is not None:
            transcript = await self.voice.transcribe(inbound)
            if transcript.text is None:
                return self.voice.not_heard(inbound, reply_id, transcript)
            text = transcript.text
        degraded = self.degraded_services()
        context = await self._context(inbound, degraded, text)
        answer = await self.responder.respond(
            text,
            session_key=inbound.partition_key,
            context=context,
            use_case=inbound.use_case.value,
        )
        if self.session is not None:
            try:
                await self.session.append(
                    inbound.partition_key, f"user: {text}", f"assistant: {answer.text}"
                )
            except TransientError:
                if "redis" not in degraded:
                    degraded.append("redis")
        reply = ConversationReply(
            message_id=reply_id,
            in_reply_to=inbound.message_id,
            tenant_id=inbound.tenant_id,
            session_id=inbound.session_id,
            text=storable_text(answer.text),
            model=storable_text(answer.model)[:255],
            degraded=tuple(sorted(set(degraded))),
        )
        if transcript is not None and self.voice is not None:
            reply = await self.voice.speak(reply, transcript)
        return reply

    DEGRADED_TEXT = (
        "Sorry, I cannot reach a language model right now. "
        "I will send you the full answer as soon as one is back."
    )
    DEGRADED_NOTICE = "Answer delayed: language models unavailable"

    def degraded_reply(self, inbound: ConversationInbound) -> ConversationReply:
        """The immediate reply when every model is down (the real answer follows later)."""
        degraded = {"llm", *self.degraded_services()}
        return ConversationReply(
            message_id=reply_id_for(inbound.tenant_id, inbound.message_id),
            in_reply_to=inbound.message_id,
            tenant_id=inbound.tenant_id,
            session_id=inbound.session_id,
            text=self.DEGRADED_TEXT,
            model="none",
            degraded=tuple(sorted(degraded)),
            notices=(self.DEGRADED_NOTICE,),
            voice_provider="native" if inbound.voice else None,
        )

    TOO_LONG_TEXT = (
        "Your message is too long for me to read at once. "
        "Please shorten it, or split it, and send it again."
    )
    TOO_LONG_NOTICE = "Message too long: please shorten it"
    REFUSED_TEXT = (
        "I could not answer this message: the model refused it as it is. "
        "Please rephrase it and send it again."
    )
    REFUSED_NOTICE = "Message refused by the model"

    def refusal(
        self, inbound: ConversationInbound, error: CallerError, *, reply_id: str | None = None
    ) -> ConversationReply:
        """The reply to a message the models refused because of the message itself.

        The caller's mistake is answered to its own message; it is no outage, so the
        reply names no degraded service.
        """
        too_long = isinstance(error, RequestTooLongError)
        return ConversationReply(
            message_id=reply_id or reply_id_for(inbound.tenant_id, inbound.message_id),
            in_reply_to=inbound.message_id,
            tenant_id=inbound.tenant_id,
            session_id=inbound.session_id,
            text=self.TOO_LONG_TEXT if too_long else self.REFUSED_TEXT,
            model="none",
            notices=(self.TOO_LONG_NOTICE if too_long else self.REFUSED_NOTICE,),
            voice_provider="native" if inbound.voice else None,
        )

    @staticmethod
    def memory_for(inbound: ConversationInbound, reply: ConversationReply) -> MemoryRecord:
        """The memory of one exchange (its id: the tenant and the inbound message id)."""
        return MemoryRecord(
            memory_id=scoped_key(inbound.tenant_id, inbound.message_id),
            tenant_id=inbound.tenant_id,
            agent_id=inbound.agent_id,
            session_id=inbound.session_id,
            content=f"user: {inbound.text}\nassistant: {reply.text}",
            metadata={
                "message_id": inbound.message_id,
                "reply_id": reply.message_id,
                "model": reply.model,
            },
            created_at=inbound.created_at,
        )
