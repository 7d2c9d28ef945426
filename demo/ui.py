"""Terminal output of the demo: ``rich`` colour and live progress bars on a TTY, plain
lines when piped.

Guarantees: on a terminal (and unless ``NO_COLOR`` or ``--no-colour``) lines are
coloured and one live progress bar at a time is redrawn in place below them, by
``rich``; piped, the output is plain text without escape codes: each bar prints its
final line, and for ten or more steps also a line at each quarter.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Final, TextIO

from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

__all__ = ["UI", "Progress", "bar_text"]

_STYLES: Final = {
    "bold": "bold",
    "dim": "dim",
    "red": "red",
    "green": "green",
    "yellow": "yellow",
    "blue": "blue",
    "magenta": "magenta",
    "cyan": "cyan",
    "healthy": "green",
    "degraded": "yellow",
    "unavailable": "red",
}
_BAR_WIDTH: Final = 24


def bar_text(done: int, total: int, *, width: int = _BAR_WIDTH) -> str:
    """``[#####.....]`` for ``done`` of ``total`` (the piped form of a bar)."""
    total = max(total, 1)
    filled = min(width, max(0, round(width * min(done, total) / total)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class UI:
    """Writes the demo's lines; one live progress bar at a time on a TTY."""

    def __init__(self, stream: TextIO | None = None, *, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        if colour is None:
            colour = self.tty and "NO_COLOR" not in os.environ
        self.colour = colour
        self.console = RichConsole(
            file=self.stream,
            force_terminal=self.tty,
            no_color=not colour,
            color_system="standard" if colour else None,
            highlight=False,
            soft_wrap=True,
        )
        self._live: Progress | None = None

    # ------------------------------------------------------------------ styling

    def paint(self, text: str, style: str) -> str:
        """``text`` in ``style`` (a colour, ``bold``, ``dim`` or a health state) when colouring."""
        name = _STYLES.get(style)
        if not self.colour or name is None:
            return text
        buffer = io.StringIO()
        RichConsole(
            file=buffer, force_terminal=True, color_system="standard", highlight=False
        ).print(Text(text, style=name), end="", soft_wrap=True)
        return buffer.getvalue()

    @property
    def arrow(self) -> str:
        """The arrow of state transitions."""
        return "→" if self.tty else "->"

    # ------------------------------------------------------------------ lines

    def line(self, text: str = "") -> None:
        """Write one line (above the live bar on a TTY, which rich redraws below it)."""
        if self.tty:
            self.console.print(Text.from_ansi(text), soft_wrap=True)
        else:
            self.stream.write(text + "\n")
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
        return bar

    def _finished(self, bar: Progress) -> None:
        if self._live is bar:
            self._live = None


class Progress:
    """One progress bar: ``label [#####.....] done/total unit  detail``.

    On a TTY it is a live ``rich`` bar; piped, it prints its final line, and for ten
    or more steps also a line at each quarter.
    """

    def __init__(self, ui: UI, label: str, total: int, unit: str) -> None:
        self.ui = ui
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.detail = ""
        self.closed = False
        self._quarter = 0
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        if ui.tty:
            self._bar = RichProgress(
                TextColumn(f"  {label:<26}"),
                BarColumn(bar_width=_BAR_WIDTH),
                MofNCompleteColumn(),
                TextColumn(f"{unit}  {{task.fields[detail]}}" if unit else "{task.fields[detail]}"),
                console=ui.console,
            )
            self._task = self._bar.add_task(label, total=max(total, 1), detail="")
            self._bar.start()

    def render(self) -> str:
        """The bar as one plain line (no newline): the piped form."""
        unit = f" {self.unit}" if self.unit else ""
        detail = f"  {self.detail}" if self.detail else ""
        bar = bar_text(self.done, self.total)
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
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, completed=done, total=max(self.total, 1), detail=self.detail
            )
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
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, detail=self.detail)
            self._bar.stop()
        else:
            self.ui.stream.write(self.render() + "\n")
            self.ui.stream.flush()
        self.ui._finished(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
