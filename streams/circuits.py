"""Operator control of a worker's circuit breakers.

Pages on the worker's web port (``SA01_WEB_PORT``)::

    GET  /circuits          every breaker: state and window counts, and circuits per state
    GET  /circuits/{name}   one breaker
    POST /circuits/{name}   {"action": "open" | "close" | "reset" | "disable"}
                            (Authorization: Bearer SA01_OPERATOR_TOKEN; see streams.web_guard)

Names hold ``:`` and ``/`` (``llm:openai/gpt-4o``): send them as they are or
URL-encoded (``llm%3Aopenai%2Fgpt-4o``); the route takes the rest of the path. An
unknown name answers 404 with the names the worker knows, a wrong action 400.

``open`` forces the circuit open (every call refused, the chain uses the next link)
until ``close``; ``close`` and ``reset`` put it back to closed with an empty window;
``disable`` lets every call through and records nothing until ``close``. Breakers
live in each worker's memory: a command acts on one worker, and a restarted worker
starts with every circuit closed. The pages list exactly the runtime's breaker registry
(``sa01.resilience.registry``), which the metrics read too: the resilient producer's Kafka
gate ``kafka:producer``, the LLM models, audio, storage and SomaBrain.

The command: ``faust -A streams circuit [list|open|close|reset|disable] [NAME]
[--url http://127.0.0.1:6066] [--json]``.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from sa01.core.errors import ResilienceError
from sa01.resilience.circuit_breaker import STATE_GAUGE_VALUES, BreakerState, CircuitBreaker
from streams.console import Console, dump_json

if TYPE_CHECKING:
    from faust.cli import AppCommand
    from faust.web import Request, Response, View

    from streams.app import StreamsApp

__all__ = [
    "ACTIONS",
    "COMMAND_ACTIONS",
    "CircuitAction",
    "CircuitCommandError",
    "apply_action",
    "circuit_json",
    "circuits_document",
    "format_circuits",
    "register",
    "request_worker",
    "worker_breakers",
]

logger = logging.getLogger(__name__)


class CircuitAction(enum.StrEnum):
    """What an operator may do to a breaker (the ``action`` of ``POST /circuits/{name}``)."""

    OPEN = "open"
    CLOSE = "close"
    RESET = "reset"
    DISABLE = "disable"


ACTIONS: dict[CircuitAction, Callable[[CircuitBreaker], None]] = {
    CircuitAction.OPEN: CircuitBreaker.force_open,
    CircuitAction.CLOSE: CircuitBreaker.reset,
    CircuitAction.RESET: CircuitBreaker.reset,
    CircuitAction.DISABLE: CircuitBreaker.disable,
}
"""What each ``action`` calls on the breaker."""

COMMAND_ACTIONS = ("list", *(action.value for action in CircuitAction))

_COLOURS = {
    BreakerState.CLOSED.value: "32",
    BreakerState.HALF_OPEN.value: "33",
    BreakerState.OPEN.value: "31",
    BreakerState.FORCED_OPEN.value: "1;31",
    BreakerState.DISABLED.value: "36",
}


class CircuitCommandError(ResilienceError):
    """The worker could not be reached or refused the request."""


def worker_breakers(app: StreamsApp) -> dict[str, CircuitBreaker]:
    """Every breaker of this worker by name: its runtime's breaker registry."""
    return dict(app.runtime.breakers.items())


def circuit_json(breaker: CircuitBreaker) -> dict[str, object]:
    """One breaker's state and window, with times as seconds from now."""
    snapshot = breaker.snapshot()
    now = breaker.clock()
    return {
        "name": snapshot.name,
        "state": snapshot.state.value,
        "gauge": STATE_GAUGE_VALUES[snapshot.state],
        "calls_in_window": snapshot.calls_in_window,
        "failed_calls": snapshot.failed_calls,
        "slow_calls": snapshot.slow_calls,
        "failure_rate": round(snapshot.failure_rate, 1),
        "consecutive_failures": snapshot.consecutive_failures,
        "consecutive_opens": snapshot.consecutive_opens,
        "open_for_seconds": (
            round(now - snapshot.opened_at, 1) if snapshot.opened_at is not None else None
        ),
        "retry_in_seconds": (
            round(max(snapshot.next_attempt_at - now, 0.0), 1)
            if snapshot.next_attempt_at is not None
            else None
        ),
    }


def circuits_document(breakers: Mapping[str, CircuitBreaker], worker: str) -> dict[str, object]:
    """``GET /circuits``: every breaker by name, and how many circuits are in each state."""
    circuits = {name: circuit_json(breakers[name]) for name in sorted(breakers)}
    counts = Counter(c["state"] for c in circuits.values())
    return {
        "worker": worker,
        "circuits": circuits,
        "counts": {state.value: counts.get(state.value, 0) for state in BreakerState},
        "total": len(circuits),
    }


def apply_action(breaker: CircuitBreaker, action: str) -> tuple[str, str]:
    """Run ``action`` (a key of :data:`ACTIONS`) on ``breaker``; (previous, new) state."""
    previous = breaker.state.value
    ACTIONS[CircuitAction(action)](breaker)
    return previous, breaker.state.value


def _unknown(web: View, name: str, breakers: Mapping[str, CircuitBreaker]) -> Response:
    return web.json(
        {"error": f"no circuit named {name!r} on this worker", "known": sorted(breakers)},
        status=404,
    )


def register_pages(app: StreamsApp) -> None:
    """``GET /circuits``, ``GET /circuits/{name}`` and ``POST /circuits/{name}``."""
    from faust.web import View

    worker = app.settings.worker_instance_id or app.settings.app_id

    @app.page("/circuits")
    async def circuits(web: View, request: Request) -> Response:
        """Every circuit breaker of this worker."""
        return web.json(circuits_document(worker_breakers(app), worker))

    @app.page("/circuits/{name:.+}")
    class CircuitView(View):
        """One circuit breaker: read it, or force it open, closed or disabled."""

        async def get(self, request: Request, name: str) -> Response:
            breakers = worker_breakers(app)
            breaker = breakers.get(name)
            if breaker is None:
                return _unknown(self, name, breakers)
            return self.json(circuit_json(breaker) | {"worker": worker})

        async def post(self, request: Request, name: str) -> Response:
            breakers = worker_breakers(app)
            breaker = breakers.get(name)
            if breaker is None:
                return _unknown(self, name, breakers)
            body = await request.read()  # read and capped by streams.web_guard
            try:
                document = json.loads(body or b"{}")
            except ValueError:
                document = None
            action = document.get("action") if isinstance(document, dict) else None
            if action not in ACTIONS:
                return self.json(
                    {
                        "error": f'expected a JSON body {{"action": ...}} with one of '
                        f"{', '.join(ACTIONS)}; got {body[:200].decode(errors='replace')!r}",
                        "actions": [action.value for action in ACTIONS],
                    },
                    status=400,
                )
            previous, state = apply_action(breaker, str(action))
            logger.warning(
                "circuit %r: %s by an operator (%s -> %s, from %s)",
                name,
                action,
                previous,
                state,
                getattr(request, "remote", None) or "?",
            )
            return self.json(
                circuit_json(breaker)
                | {"worker": worker, "action": action, "previous_state": previous}
            )


# ------------------------------------------------------------------------ the command


async def request_worker(
    base: str,
    method: str,
    path: str,
    body: Mapping[str, object] | None = None,
    token: SecretStr | None = None,
) -> dict[str, object]:
    """``method base+path`` as JSON, with ``token`` as the bearer when set.

    Raises :class:`CircuitCommandError` with a readable reason (the worker's own for a
    refusal: no token configured, a missing or wrong one).
    """
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else None
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.request(method, f"{base}{path}", json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise CircuitCommandError(
            f"worker at {base} is not reachable ({type(exc).__name__}): start it "
            "(`faust -A streams worker`) or point --url at its web port"
        ) from exc
    try:
        document: object = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise CircuitCommandError(
            f"worker at {base} answered {response.status_code} to {method} {path} without "
            "a JSON object (an older worker without /circuits?)"
        )
    if response.status_code == 404 and "known" in document:
        known = ", ".join(_strings(document["known"])) or "none"
        raise CircuitCommandError(f"{document.get('error')} (worker at {base}); known: {known}")
    if response.status_code != 200:
        raise CircuitCommandError(
            f"worker at {base} answered {response.status_code}: "
            f"{document.get('error', response.text[:200])}"
        )
    return document


def _paint(console: Console, state: str) -> str:
    code = _COLOURS.get(state)
    if not console.colour or code is None:
        return state
    return f"\033[{code}m{state}\033[0m"


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _seconds(value: object) -> str:
    return f"{value:g}s" if isinstance(value, int | float) else ""


def format_circuits(circuits: list[Mapping[str, object]], console: Console) -> list[str]:
    """A table of circuits: name, state, window counts, time to the next trial."""
    header = ("CIRCUIT", "STATE", "CALLS", "FAILED", "FAILURE%", "RETRY IN")
    rows = [header]
    for c in circuits:
        rows.append(
            (
                str(c.get("name", "?")),
                str(c.get("state", "?")),
                str(c.get("calls_in_window", "")),
                str(c.get("failed_calls", "")),
                f"{c.get('failure_rate', 0):g}",
                _seconds(c.get("retry_in_seconds")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(len(header))]
        if index:
            cells[1] = _paint(console, row[1]) + " " * (widths[1] - len(row[1]))
        lines.append("  ".join(cells).rstrip())
    return lines


def register_command(app: StreamsApp) -> None:
    """``faust -A streams circuit [list|open|close|reset|disable] [NAME]``."""
    import click
    from faust.cli import argument, option

    settings = app.settings

    @app.command(
        argument("action", required=False, default="list", type=click.Choice(COMMAND_ACTIONS)),
        argument("name", required=False, default=None),
        option("--url", default="", help="The worker's base URL (default from settings)."),
        option("--json", "as_json", is_flag=True, default=False, help="Print the JSON."),
    )
    async def circuit(
        self: AppCommand, action: str, name: str | None, url: str, as_json: bool
    ) -> None:
        """A worker's circuit breakers: list [NAME]; open, close, reset or disable NAME."""
        base = (url or f"http://{settings.web_host}:{settings.web_port}").rstrip("/")
        console = Console()
        try:
            if action == "list":
                path = f"/circuits/{quote(name, safe='')}" if name else "/circuits"
                document = await request_worker(base, "GET", path)
            elif not name:
                raise CircuitCommandError(
                    f"circuit {action} needs the name of a circuit (see `circuit list`)"
                )
            else:
                document = await request_worker(
                    base,
                    "POST",
                    f"/circuits/{quote(name, safe='')}",
                    {"action": action},
                    token=settings.operator_token,
                )
        except ResilienceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        if as_json:
            console.line(dump_json(document))
            return
        if action != "list":
            console.line(
                f"{document['name']}: {_paint(console, str(document['previous_state']))} -> "
                f"{_paint(console, str(document['state']))} (worker {document.get('worker')} "
                f"at {base})"
            )
            return
        listed = document.get("circuits")
        circuits: list[Mapping[str, object]] = (
            [c for c in listed.values() if isinstance(c, Mapping)]
            if isinstance(listed, dict)
            else [document]
        )
        console.line(f"(worker {document.get('worker')} at {base})")
        for line in format_circuits(circuits, console):
            console.line(line)
        tally = document.get("counts")
        if isinstance(tally, dict):
            counts = ", ".join(f"{n} {state}" for state, n in tally.items() if n)
            console.line("")
            console.line(f"{document['total']} circuits: {counts or 'none'}")


def register(app: StreamsApp) -> None:
    """Declare the ``/circuits`` pages and the ``circuit`` command on ``app``."""
    register_pages(app)
    register_command(app)
