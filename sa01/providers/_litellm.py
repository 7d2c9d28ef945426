"""The one place litellm is imported, configured and quietened.

Guarantees:

* importing this module imports nothing heavy, reads no environment and does no I/O;
* :func:`import_litellm` (blocking: seconds) sets litellm's environment first, so the
  import never fetches the model cost map over the network
  (``LITELLM_LOCAL_MODEL_COST_MAP=True``, unless the operator set it otherwise);
* after the import litellm keeps no callbacks of its own and logs only warnings and
  errors: its INFO lines carry arguments their format strings do not use, and under
  the worker's logging each printed a "--- Logging error ---" traceback;
* :func:`load_litellm` runs the import once per process, in a thread, so the event
  loop is never blocked by it; concurrent first calls wait for the same import.

litellm's per-call cost calculation and success logging cannot be switched off
(1.110.2): the LLM chain therefore calls OpenAI-compatible endpoints through the
openai SDK (``sa01.providers.llm_clients``) and keeps litellm for the other providers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

__all__ = ["LITELLM_ENVIRONMENT", "LITELLM_LOGGERS", "import_litellm", "load_litellm"]

#: Set (when unset) before litellm is first imported.
LITELLM_ENVIRONMENT: dict[str, str] = {
    # The cost map shipped with the package, not a download at import time. Not
    # LITELLM_LOG: when set, litellm applies it to the root logger as well.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
}

#: litellm's loggers, kept at WARNING.
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm")

_import_lock = threading.Lock()
_module: Any = None


def import_litellm() -> Any:
    """Import litellm (seconds: call it in a thread), configured; once per process."""
    global _module
    with _import_lock:
        if _module is not None:
            return _module
        for name, value in LITELLM_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.turn_off_message_logging = True
        # Our breakers and fallback chains own retries, timeouts and accounting.
        litellm.num_retries = 0
        for attribute in ("callbacks", "success_callback", "failure_callback", "input_callback"):
            setattr(litellm, attribute, [])
        for name in LITELLM_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        _module = litellm
        return litellm


async def load_litellm() -> Any:
    """litellm, imported in a thread on first use (see :func:`import_litellm`)."""
    if _module is not None:
        return _module
    return await asyncio.to_thread(import_litellm)
