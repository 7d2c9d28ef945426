"""One LLM model behind one client: the responders of an LLM fallback chain's links.

* :class:`OpenAIResponder` answers for ``openai/<model>`` (OpenAI, or any
  OpenAI-compatible endpoint given by ``api_base``) through one shared
  ``openai.AsyncOpenAI`` client per endpoint and key (:class:`OpenAIClients`): HTTP
  connections are reused, and the SDK does no retries (``max_retries=0``).
* :class:`LiteLLMResponder` answers for every other provider (``anthropic/...``,
  ``openrouter/...``, ...) through ``litellm.acompletion`` with ``num_retries=0``.

Guarantees, for both:

* no retry inside the client: the chain's breakers and fallbacks own retries;
* a failure becomes one of the project's errors exactly as ``sa01.providers.llm_errors``
  maps it, whichever client made the call;
* after a 429 the model is not called again before its Retry-After has passed
  (:class:`RateLimitedError` at once, without a request);
* constructors do no I/O and import nothing heavy: the openai SDK and litellm are
  imported in a thread on the first call (seconds), never on the event loop;
* neither client logs a line per call (their HTTP loggers are kept at WARNING).

Why two clients: litellm 1.110 spends about twice the openai SDK's CPU per call on
its own work (cost calculation, logging objects, response conversion) that no
setting turns off; ``python -m bench --only llm_client_cpu`` measures it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sa01.core.errors import RequestTooLongError, ServiceUnavailableError
from sa01.providers._litellm import load_litellm
from sa01.providers.llm_errors import RateLimitedError, provider_failure
from sa01.providers.responder import ResponderAnswer

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = [
    "OPENAI_API_BASE",
    "OPENAI_HTTP_LOGGER",
    "LiteLLMResponder",
    "ModelResponder",
    "OpenAIClients",
    "OpenAIResponder",
    "load_openai",
    "model_responder",
]

#: Where ``openai/<model>`` is asked when its link names no ``api_base``.
OPENAI_API_BASE = "https://api.openai.com/v1"

_openai_lock = threading.Lock()
_openai: Any = None


#: The openai SDK's HTTP client logs every request at INFO ("HTTP Request: POST ..."):
#: one line per LLM call in the worker's log. Kept at WARNING, as litellm's loggers.
OPENAI_HTTP_LOGGER = "httpx2"


def _import_openai() -> Any:
    global _openai
    with _openai_lock:
        import openai

        logging.getLogger(OPENAI_HTTP_LOGGER).setLevel(logging.WARNING)
        _openai = openai
        return openai


async def load_openai() -> Any:
    """The openai SDK, imported in a thread (seconds) on first use; then at once."""
    if _openai is not None:
        return _openai
    return await asyncio.to_thread(_import_openai)


def _messages(text: str, context: Sequence[str]) -> list[dict[str, str]]:
    messages = []
    if context:
        messages.append({"role": "system", "content": "Context:\n" + "\n".join(context)})
    messages.append({"role": "user", "content": text})
    return messages


class OpenAIClients:
    """One ``AsyncOpenAI`` client per (endpoint, key), built on first use; :meth:`aclose`.

    The clients never retry (``max_retries=0``) and read no environment: the endpoint
    and key are always given.
    """

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], AsyncOpenAI] = {}

    async def get(self, api_base: str, api_key: str) -> AsyncOpenAI:
        """The shared client of ``api_base`` with ``api_key``."""
        client = self._clients.get((api_base, api_key))
        if client is None:
            openai = await load_openai()
            client = self._clients.get((api_base, api_key))
            if client is None:
                client = openai.AsyncOpenAI(base_url=api_base, api_key=api_key, max_retries=0)
                self._clients[(api_base, api_key)] = client
        return client

    async def aclose(self) -> None:
        """Close every client's connections."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


class _RateLimitGate:
    """Refuses calls to a model until its last Retry-After has passed."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._not_before = 0.0

    def check(self) -> None:
        wait = self._not_before - time.monotonic()
        if wait > 0:
            raise RateLimitedError(self.model, wait)

    def note(self, error: Exception) -> None:
        if isinstance(error, RateLimitedError):
            self._not_before = time.monotonic() + error.retry_after


class OpenAIResponder:
    """Calls ``openai/<model>`` through the shared client of its endpoint and key."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None,
        api_key: str | None,
        timeout: float,
        clients: OpenAIClients,
    ) -> None:
        self.model = model
        self.api_base = api_base or OPENAI_API_BASE
        self.api_key = api_key
        self.timeout = timeout
        self.clients = clients
        self._wire_model = model.split("/", 1)[1] if model.startswith("openai/") else model
        self._gate = _RateLimitGate(model)

    async def respond(
        self,
        text: str,
        *,
        session_key: str,
        context: Sequence[str] = (),
        use_case: str = "chat",
    ) -> ResponderAnswer:
        """Ask the model; see the module's guarantees."""
        self._gate.check()
        if not self.api_key:
            raise ServiceUnavailableError(self.model, "credentials refused: no API key is set")
        client = await self.clients.get(self.api_base, self.api_key)
        openai = await load_openai()
        try:
            completion = await client.chat.completions.create(
                model=self._wire_model,
                messages=_messages(text, context),  # type: ignore[arg-type]
                timeout=self.timeout,
            )
        except openai.OpenAIError as exc:
            error = provider_failure(self.model, exc)
            self._gate.note(error)
            raise error from exc
        if not completion.choices:
            raise ServiceUnavailableError(self.model, "the answer has no choices")
        content = completion.choices[0].message.content or ""
        return ResponderAnswer(text=content, model=str(completion.model or self.model))


class LiteLLMResponder:
    """Calls one model through ``litellm.acompletion`` (any provider litellm knows)."""

    def __init__(self, model: str, *, api_base: str | None, api_key: str | None, timeout: float):
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.timeout = timeout
        self._gate = _RateLimitGate(model)

    async def respond(
        self,
        text: str,
        *,
        session_key: str,
        context: Sequence[str] = (),
        use_case: str = "chat",
    ) -> ResponderAnswer:
        """Ask the model; see the module's guarantees."""
        self._gate.check()
        litellm = await load_litellm()
        try:
            response = await litellm.acompletion(
                model=self.model,
                messages=_messages(text, context),
                api_base=self.api_base,
                api_key=self.api_key,
                timeout=self.timeout,
                num_retries=0,
            )
        except litellm.ContextWindowExceededError as exc:
            raise RequestTooLongError(f"{self.model}: the message is too long: {exc}") from exc
        except tuple(litellm.LITELLM_EXCEPTION_TYPES) as exc:  # every exception litellm maps
            error = provider_failure(self.model, exc)
            self._gate.note(error)
            raise error from exc
        content = response.choices[0].message.content or ""
        return ResponderAnswer(text=content, model=str(getattr(response, "model", self.model)))


ModelResponder = OpenAIResponder | LiteLLMResponder


def model_responder(
    model: str,
    *,
    api_base: str | None,
    api_key: str | None,
    timeout: float,
    clients: OpenAIClients,
) -> ModelResponder:
    """The responder of ``model``: the openai SDK for ``openai/...``, else litellm."""
    if model.startswith("openai/"):
        return OpenAIResponder(
            model, api_base=api_base, api_key=api_key, timeout=timeout, clients=clients
        )
    return LiteLLMResponder(model, api_base=api_base, api_key=api_key, timeout=timeout)
