"""Terminal output of the ``tail`` and ``status`` commands: colour on a TTY, plain when piped."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from schemas.messages import DegradationEvent

__all__ = ["Console", "format_event", "format_status"]

_COLOURS = {
    "healthy": "32",
    "degraded": "33",
    "unavailable": "31",
    "not_configured": "2",
    "none": "32",
    "minor": "36",
    "moderate": "33",
    "severe": "31",
    "critical": "1;31",
}


class Console:
    """Writes lines; colours words only when the stream is a terminal."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty() if colour is None else colour

    def paint(self, word: str) -> str:
        """``word`` in its colour (healthy green, unavailable red, ...)."""
        code = _COLOURS.get(word)
        if not self.colour or code is None:
            return word
        return f"\033[{code}m{word}\033[0m"

    def line(self, text: str = "") -> None:
        """Write one line and flush."""
        self.stream.write(text + "\n")
        self.stream.flush()


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
    """A table of services from a ``/status`` document."""
    services: Mapping[str, Mapping[str, Any]] = document.get("services", {})
    rows = [("SERVICE", "STATE", "LEVEL", "CIRCUIT", "SINCE", "REASON")]
    for name, health in sorted(services.items()):
        rows.append(
            (
                name,
                str(health.get("state", "?")),
                str(health.get("level", "?")),
                str(health.get("circuit", "?")),
                str(health.get("since", ""))[:19].replace("T", " "),
                str(health.get("reason", ""))[:60],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(5)]
        if index:
            cells[1] = console.paint(row[1]) + " " * (widths[1] - len(row[1]))
            cells[2] = console.paint(row[2]) + " " * (widths[2] - len(row[2]))
        lines.append("  ".join(cells) + "  " + row[5])
    overall = str(document.get("overall", "none"))
    lines.append("")
    lines.append(f"overall: {console.paint(overall)}")
    return lines


def dump_json(document: Any) -> str:
    """Compact JSON for ``--json`` output."""
    return json.dumps(document, sort_keys=True, default=str)
