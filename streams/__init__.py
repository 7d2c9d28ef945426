"""The Faust app of the resilience layer: ``faust -A streams worker``.

Importing this module builds the app from the environment (``SA01_*``) and
declares its agents, pages and commands; it imports neither litellm nor anything
slow.
"""

import sys

from pydantic import ValidationError

from agents import conversation as _conversation_agent
from agents import degradation as _degradation_agent
from agents import memory as _memory_agent
from agents import uploads as _upload_agents
from sa01.core.errors import ConfigurationError
from sa01.core.redaction import describe_validation_error
from streams import circuits as _circuits
from streams import commands as _commands
from streams import dlq as _dlq
from streams import timers as _timers
from streams import web as _web
from streams.app import StreamsApp, create_app

__all__ = ["StreamsApp", "app", "create_app"]

try:
    app: StreamsApp = create_app()
except ValidationError as _exc:
    print(f"error: invalid settings: {describe_validation_error(_exc)}", file=sys.stderr)
    raise SystemExit(2) from None
except ConfigurationError as _exc:
    print(f"error: {_exc}", file=sys.stderr)
    raise SystemExit(2) from None
_conversation_agent.register(app)
_degradation_agent.register(app)
_memory_agent.register(app)
_upload_agents.register(app)
_timers.register(app)
_web.register(app)
_commands.register(app)
_commands.register_operator_commands(app)
_dlq.register(app)
_circuits.register(app)
_commands.register_memory_command(app)
_commands.register_storage_commands(app)
