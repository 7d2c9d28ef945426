"""The responder interface and its implementations.

A responder turns a user's message into the text of a reply. The conversation
journey knows only the :class:`Responder` Protocol. :class:`LiteLLMResponder` calls
one model through litellm (any OpenAI-compatible endpoint via ``api_base``);
:class:`EchoResponder` answers in-process (benchmarks of the pipeline's overhead).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sa01.core.errors import ProviderRequestError, RequestTooLongError, ServiceUnavailableError
from sa01.core.metrics import Metrics
from sa01.core.settings import PROVIDER_KEY_VARIABLES, Settings

__all__ = [
    "EchoResponder",
    "LiteLLMResponder",
    "ProviderRequestError",
    "RateLimitedError",
    "Responder",
    "ResponderAnswer",
    "build_responder",
    "import_litellm",
    "missing_key_notice",
]

logger = logging.getLogger(__name__)


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


class RateLimitedError(ServiceUnavailableError):
    """The provider answered 429: it is not called again before ``retry_after`` seconds."""

    def __init__(self, model: str, retry_after: float) -> None:
        super().__init__(model, f"rate-limited, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


MAX_RETRY_AFTER_SECONDS = 300.0


def retry_after_seconds(headers: Any) -> float:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date); 1 if absent."""
    if headers is None:
        return 1.0
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return min(float(millis) / 1000, MAX_RETRY_AFTER_SECONDS)
        value = headers.get("retry-after")
        if value is None:
            return 1.0
        try:
            return min(max(float(value), 0.0), MAX_RETRY_AFTER_SECONDS)
        except ValueError:
            when = email.utils.parsedate_to_datetime(str(value))
            delta = (when - datetime.now(UTC)).total_seconds()
            return min(max(delta, 0.0), MAX_RETRY_AFTER_SECONDS)
    except (TypeError, ValueError):
        return 1.0


class LiteLLMResponder:
    """Calls one model through litellm; litellm is imported on first use, not at start-up."""

    def __init__(self, model: str, *, api_base: str | None, api_key: str | None, timeout: float):
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.timeout = timeout
        self._litellm: Any = None
        self._import_lock = asyncio.Lock()
        self._not_before = 0.0

    async def _module(self) -> Any:
        async with self._import_lock:
            if self._litellm is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                self._litellm = await asyncio.to_thread(import_litellm)
        return self._litellm

    async def respond(
        self,
        text: str,
        *,
        session_key: str,
        context: Sequence[str] = (),
        use_case: str = "chat",
    ) -> ResponderAnswer:
        """Ask the model; provider outages become :class:`ServiceUnavailableError`.

        After a 429 the model is not called again before its Retry-After has passed.
        """
        wait = self._not_before - time.monotonic()
        if wait > 0:
            raise RateLimitedError(self.model, wait)
        litellm = await self._module()
        messages = []
        if context:
            messages.append({"role": "system", "content": "Context:\n" + "\n".join(context)})
        messages.append({"role": "user", "content": text})
        try:
            response = await litellm.acompletion(
                model=self.model,
                messages=messages,
                api_base=self.api_base,
                api_key=self.api_key,
                timeout=self.timeout,
                num_retries=0,
            )
        except litellm.ContextWindowExceededError as exc:
            raise RequestTooLongError(f"{self.model}: the message is too long: {exc}") from exc
        except (litellm.BadRequestError, litellm.UnprocessableEntityError) as exc:
            raise ProviderRequestError(f"{self.model} refused the request: {exc}") from exc
        except (litellm.AuthenticationError, litellm.PermissionDeniedError) as exc:
            raise ServiceUnavailableError(self.model, f"credentials refused: {exc}") from exc
        except litellm.RateLimitError as exc:
            delay = retry_after_seconds(getattr(exc, "litellm_response_headers", None))
            self._not_before = time.monotonic() + delay
            raise RateLimitedError(self.model, delay) from exc
        except (
            litellm.APIConnectionError,
            litellm.Timeout,
            litellm.ServiceUnavailableError,
            litellm.InternalServerError,
            litellm.APIError,
        ) as exc:
            raise ServiceUnavailableError(self.model, str(exc)) from exc
        content = response.choices[0].message.content or ""
        return ResponderAnswer(text=content, model=str(getattr(response, "model", self.model)))


def import_litellm() -> Any:
    """Import litellm (seconds: call it in a thread) with its debug chatter off."""
    import litellm

    litellm.suppress_debug_info = True
    # litellm's INFO lines carry arguments its format strings do not use: under the
    # worker's logging each one printed a "--- Logging error ---" traceback.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return litellm


def build_responder(settings: Settings, metrics: Metrics) -> Responder:
    """The responder the settings ask for: ``echo``, or the LLM fallback chain."""
    if settings.responder == "echo":
        return EchoResponder()
    from sa01.providers.llm_chain import build_chain_responder

    return build_chain_responder(settings, metrics)


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
