"""Terminal output of the demo: colour and live progress bars on a TTY, plain lines when piped."""

from __future__ import annotations

import os
import sys
import time
from typing import Final, TextIO

__all__ = ["UI", "Progress", "bar_text"]

_STYLES: Final = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "healthy": "32",
    "degraded": "33",
    "unavailable": "31",
}
_BAR_WIDTH: Final = 24


def bar_text(done: int, total: int, *, fancy: bool, width: int = _BAR_WIDTH) -> str:
    """``[#####.....]`` (``█`` and ``░`` when ``fancy``) for ``done`` of ``total``."""
    total = max(total, 1)
    filled = min(width, max(0, round(width * min(done, total) / total)))
    full, empty = ("█", "░") if fancy else ("#", ".")
    return "[" + full * filled + empty * (width - filled) + "]"


class UI:
    """Writes the demo's lines; one live progress bar at a time is redrawn in place on a TTY."""

    def __init__(self, stream: TextIO | None = None, *, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        if colour is None:
            colour = self.tty and "NO_COLOR" not in os.environ
        self.colour = colour
        self._live: Progress | None = None

    # ------------------------------------------------------------------ styling

    def paint(self, text: str, style: str) -> str:
        """``text`` in ``style`` (a colour, ``bold``, ``dim`` or a health state) when colouring."""
        code = _STYLES.get(style)
        if not self.colour or code is None:
            return text
        return f"\033[{code}m{text}\033[0m"

    @property
    def arrow(self) -> str:
        """The arrow of state transitions."""
        return "→" if self.tty else "->"

    # ------------------------------------------------------------------ lines

    def line(self, text: str = "") -> None:
        """Write one line (above the live bar, which is redrawn after it)."""
        if self._live is not None and self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        if self._live is not None and self.tty:
            self.stream.write(self._live.render())
        self.stream.flush()

    def heading(self, text: str) -> None:
        """A section title."""
        rule = "═" if self.tty else "="
        self.line()
        self.line(self.paint(f"{rule * 3} {text} {rule * max(3, 72 - len(text))}", "bold"))

    def step(self, text: str) -> None:
        """What the demo does next."""
        self.line(self.paint("▸ " if self.tty else "> ", "cyan") + text)

    def note(self, text: str) -> None:
        """A dimmed explanation."""
        self.line(self.paint(f"  {text}", "dim"))

    def ok(self, text: str) -> None:
        """A check that held."""
        self.line(self.paint("  ✔ " if self.tty else "  [ok] ", "green") + text)

    def bad(self, text: str) -> None:
        """A check that did not hold."""
        self.line(self.paint("  ✘ " if self.tty else "  [FAIL] ", "red") + text)

    def skip(self, text: str) -> None:
        """Something skipped."""
        self.line(self.paint("  ~ " if self.tty else "  [skip] ", "yellow") + text)

    # ------------------------------------------------------------------ progress

    def progress(self, label: str, total: int, *, unit: str = "") -> Progress:
        """A progress bar; close it (or use it as a context manager) when done."""
        if self._live is not None:
            self._live.close()
        bar = Progress(self, label, total, unit)
        self._live = bar
        if self.tty:
            self.stream.write(bar.render())
            self.stream.flush()
        return bar

    def _redraw(self, bar: Progress) -> None:
        if self._live is bar and self.tty:
            self.stream.write("\r\033[K" + bar.render())
            self.stream.flush()

    def _finish(self, bar: Progress) -> None:
        if self._live is bar:
            self._live = None
            if self.tty:
                self.stream.write("\r\033[K")
        self.stream.write(bar.render() + "\n")
        self.stream.flush()


class Progress:
    """One progress bar: ``label [#####.....] done/total unit  detail``.

    On a TTY it is redrawn in place (at most ten times a second); piped, it prints its
    final line, and for ten or more steps also a line at each quarter.
    """

    def __init__(self, ui: UI, label: str, total: int, unit: str) -> None:
        self.ui = ui
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.detail = ""
        self.closed = False
        self._drawn_at = 0.0
        self._quarter = 0

    def render(self) -> str:
        """The bar as one line (no newline)."""
        bar = bar_text(self.done, self.total, fancy=self.ui.tty)
        if self.ui.colour:
            bar = self.ui.paint(bar, "green" if self.done >= self.total else "cyan")
        unit = f" {self.unit}" if self.unit else ""
        detail = f"  {self.detail}" if self.detail else ""
        return f"  {self.label:<26} {bar} {self.done}/{self.total}{unit}{detail}"

    def update(self, done: int, *, total: int | None = None, detail: str | None = None) -> None:
        """Move the bar to ``done`` (and ``total``, ``detail`` when given)."""
        if self.closed:
            return
        self.done = done
        if total is not None:
            self.total = total
        if detail is not None:
            self.detail = detail
        if self.ui.tty:
            now = time.monotonic()
            if now - self._drawn_at >= 0.1:
                self._drawn_at = now
                self.ui._redraw(self)
            return
        quarter = min(4, 4 * self.done // max(self.total, 1))
        if self.total >= 10 and 0 < quarter < 4 and quarter > self._quarter:
            self._quarter = quarter
            self.ui.stream.write(self.render() + "\n")
            self.ui.stream.flush()

    def close(self, detail: str | None = None) -> None:
        """Draw the final state on its own line (idempotent)."""
        if self.closed:
            return
        if detail is not None:
            self.detail = detail
        self.closed = True
        self.ui._finish(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
