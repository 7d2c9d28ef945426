"""Terminal output of the operator commands (``status``, ``tail``, ``circuit``, ``dlq``).

Guarantees: colour, tables and progress come from ``rich``, and only on a terminal
(rich's detection: a TTY, ``NO_COLOR`` and ``TERM=dumb`` honoured) or when asked
for; piped output is plain text, with no escape code, one line per row, and
``--json`` output is the documents as compact JSON, one per line, whatever the
stream.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console as RichConsole
from rich.table import Table
from rich.text import Text

from schemas.messages import DegradationEvent

__all__ = ["Console", "dump_json", "format_event", "format_status", "table_lines"]

_STYLES = {
    "healthy": "green",
    "degraded": "yellow",
    "unavailable": "red",
    "not_configured": "dim",
    "none": "green",
    "minor": "cyan",
    "moderate": "yellow",
    "severe": "red",
    "critical": "bold red",
}
_TABLE_WIDTH = 400
"""Tables are rendered this wide at most: rows are never wrapped nor cut (a reason is
cut by its column's own bound)."""


class Console:
    """Writes lines to ``stream``; colours words only on a terminal (or when ``colour``).

    ``rich`` is the :class:`rich.console.Console` on the same stream (for progress
    bars and live views); it colours exactly when :attr:`colour` is true.
    """

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        if colour is None:
            self.rich = RichConsole(file=self.stream, highlight=False, soft_wrap=True)
            self.colour = self.rich.is_terminal and self.rich.color_system is not None
        else:
            self.colour = colour
            self.rich = _fixed_console(self.stream, colour)

    def paint(self, word: str) -> str:
        """``word`` in its colour (healthy green, unavailable red, ...)."""
        style = _STYLES.get(word)
        if not self.colour or style is None:
            return word
        return render_ansi(Text(word, style=style))

    def line(self, text: str = "") -> None:
        """Write one line and flush."""
        self.stream.write(text + "\n")
        self.stream.flush()


def _fixed_console(stream: TextIO, colour: bool, width: int | None = None) -> RichConsole:
    return RichConsole(
        file=stream,
        force_terminal=colour,
        no_color=not colour,
        color_system="standard" if colour else None,
        highlight=False,
        soft_wrap=True,
        width=width,
    )


def render_ansi(renderable: Text | Table, *, colour: bool = True) -> str:
    """``renderable`` as text (with ANSI colours when ``colour``), without a final newline."""
    buffer = io.StringIO()
    _fixed_console(buffer, colour, width=_TABLE_WIDTH).print(renderable, end="")
    return buffer.getvalue()


def table_lines(
    headers: Sequence[str], rows: Sequence[Sequence[str | Text]], console: Console
) -> list[str]:
    """A borderless table (columns two spaces apart) as lines, trailing spaces stripped;
    the header bold and cells in their styles only when ``console`` colours."""
    table = Table(
        box=None,
        pad_edge=False,
        padding=(0, 2, 0, 0),
        show_edge=False,
        header_style="bold" if console.colour else "",
    )
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*row)
    return [line.rstrip() for line in render_ansi(table, colour=console.colour).splitlines()]


def format_event(event: DegradationEvent, console: Console) -> str:
    """One readable line per degradation event."""
    before = event.previous_state.value if event.previous_state else "unknown"
    when = event.observed_at.strftime("%Y-%m-%d %H:%M:%S")
    latency = f" {event.latency_ms:.0f}ms" if event.latency_ms is not None else ""
    reason = f"  {event.reason}" if event.reason else ""
    return (
        f"{when}  {event.service:<13} {console.paint(before)} -> "
        f"{console.paint(event.state.value)}  circuit={event.circuit.value}{latency}"
        f"{reason}  [{event.source}]"
    )


def format_status(document: Mapping[str, Any], console: Console) -> list[str]:
    """A table of services from a ``/status`` document, then the overall level."""
    services: Mapping[str, Mapping[str, Any]] = document.get("services", {})
    rows: list[list[str | Text]] = []
    for name, health in sorted(services.items()):
        state, level = str(health.get("state", "?")), str(health.get("level", "?"))
        rows.append(
            [
                name,
                Text(state, style=_STYLES.get(state, "")),
                Text(level, style=_STYLES.get(level, "")),
                str(health.get("circuit", "?")),
                str(health.get("since", ""))[:19].replace("T", " "),
                str(health.get("reason", ""))[:60],
            ]
        )
    headers = ("SERVICE", "STATE", "LEVEL", "CIRCUIT", "SINCE", "REASON")
    lines = table_lines(headers, rows, console)
    overall = str(document.get("overall", "none"))
    lines.append("")
    lines.append(f"overall: {console.paint(overall)}")
    return lines


def dump_json(document: Any) -> str:
    """Compact JSON for ``--json`` output."""
    return json.dumps(document, sort_keys=True, default=str)
