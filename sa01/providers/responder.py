"""The responder interface: what the conversation journey knows of an LLM.

A responder turns a user's message into the text of a reply. The conversation
journey knows only the :class:`Responder` Protocol. :class:`EchoResponder` answers
in-process (benchmarks of the pipeline's overhead); the LLM responders live in
``sa01.providers.llm_clients`` (one model) and ``sa01.providers.llm_chain`` (fallback chains,
and the factory :func:`~providers.llm_chain.build_responder_chain`). This module
imports neither of them: the providers' imports run one way, chain → clients →
responder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sa01.core.settings import PROVIDER_KEY_VARIABLES, Settings

__all__ = ["EchoResponder", "Responder", "ResponderAnswer", "missing_key_notice"]


@dataclass(frozen=True)
class ResponderAnswer:
    """The text of a reply and the model that wrote it."""

    text: str
    model: str


class Responder(Protocol):
    """Anything that can answer a user's message."""

    async def respond(
        self,
        text: str,
        *,
        session_key: str,
        context: Sequence[str] = (),
        use_case: str = "chat",
    ) -> ResponderAnswer:
        """Answer ``text`` written in the session ``session_key``, given ``context``."""
        ...


class EchoResponder:
    """Answers in-process by echoing: measures the pipeline without an LLM."""

    model = "echo"

    async def respond(
        self,
        text: str,
        *,
        session_key: str,
        context: Sequence[str] = (),
        use_case: str = "chat",
    ) -> ResponderAnswer:
        """Echo ``text``."""
        return ResponderAnswer(text=f"echo: {text}", model=self.model)


def missing_key_notice(settings: Settings) -> str | None:
    """A plain explanation when the configured model has no key and no endpoint of its own."""
    if settings.responder != "litellm" or settings.llm_api_base:
        return None
    if settings.provider_key(settings.llm_model) is not None:
        return None
    provider = settings.llm_model.split("/", 1)[0]
    variable = PROVIDER_KEY_VARIABLES.get(provider, f"{provider.upper()}_API_KEY")
    return (
        f"{variable} is not set, so {settings.llm_model} cannot answer: messages will be "
        f"retried and then dead-lettered. Either export {variable}=..., or point the model "
        "at any OpenAI-compatible endpoint with SA01_LLM_MODEL=openai/<model> and "
        "SA01_LLM_API_BASE=http://<host>:<port>/v1, or answer without an LLM with "
        "SA01_RESPONDER=echo."
    )
