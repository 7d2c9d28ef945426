"""Loopback fakes of external services for tests and demos.

:class:`LLMServer` is a real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions
and Anthropic messages APIs and can be switched into a :class:`FailureMode` at run time.

Names are resolved lazily so that ``python -m loopback.llm_server`` does not import the module
twice.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopback.llm_server import FailureMode, LLMServer, RecordedRequest

__all__ = ["FailureMode", "LLMServer", "RecordedRequest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from loopback import llm_server

        return getattr(llm_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
