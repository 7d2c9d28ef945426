"""``faust -A streams dlq list|show|replay|purge``: dead-letter administration.

The ``dead_letter_message`` table indexes every dead letter (the agent's and the
relay's); the ``.dlq`` topics carry the same records for stream tools. Replay sends
a dead letter's original key and bytes back to its original topic through the outbox
(so it is durable and published exactly once) and marks it replayed.

Filters: ids, ``--topic``, ``--error``, ``--since D`` (newer than D), ``--older-than D``
(older than D: retention clean-up is ``purge --older-than 30d``). ``purge`` with no
filter deletes every dead letter and is refused unless ``--all`` says so.

Output: a replay shows a ``rich`` progress bar on a terminal and ``replayed N/T``
lines when piped; ``--json`` prints one JSON document per line either way.
"""

from __future__ import annotations

import base64
import re
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from sa01.core.errors import ConfigurationError, ResilienceError
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.dead_letter_store import DeadLetterAdmin, DeadLetterFilter, StoredDeadLetter
from sa01.outbox.store import OutboxRecord, OutboxStore
from schemas.headers import IDEMPOTENCY_KEY
from streams.console import Console, dump_json

if TYPE_CHECKING:
    from streams.app import StreamsApp

__all__ = ["ACTIONS", "build_filter", "parse_duration", "parse_since", "register", "run_dlq"]

ACTIONS = ("list", "show", "replay", "purge")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, option: str = "--since") -> float:
    """``90``, ``30m``, ``2h``, ``1d``, ``2w`` as seconds; ``option`` names it in the error."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigurationError(
            f"{option} {text!r}: expected a duration such as 30m, 2h, 1d or 2w"
        )
    return float(match[1]) * _UNITS[match[2]]


def parse_since(text: str) -> float:
    """``90``, ``30m``, ``2h``, ``1d`` as seconds (the ``--since`` option)."""
    return parse_duration(text, "--since")


def build_filter(
    settings: Settings,
    action: str,
    *,
    ids: tuple[int, ...] = (),
    topic: str | None = None,
    error: str | None = None,
    since: str | None = None,
    older_than: str | None = None,
    include_replayed: bool = False,
) -> DeadLetterFilter:
    """The selection of a ``dlq`` command line; the topic takes the configured prefix."""
    since_seconds = parse_duration(since, "--since") if since else None
    older_than_seconds = parse_duration(older_than, "--older-than") if older_than else None
    if (
        since_seconds is not None
        and older_than_seconds is not None
        and since_seconds <= older_than_seconds
    ):
        raise ConfigurationError(
            f"--since {since} --older-than {older_than} selects nothing: --since keeps dead "
            "letters newer than its duration, --older-than those older than its own"
        )
    if topic and not topic.startswith(settings.topic_prefix or "\0"):
        topic = settings.topic(topic)
    return DeadLetterFilter(
        ids=ids,
        topic=topic,
        error=error,
        since_seconds=since_seconds,
        older_than_seconds=older_than_seconds,
        include_replayed=include_replayed or action in ("list", "show", "purge"),
    )


def _text(data: bytes | None) -> str:
    if data is None:
        return "<none>"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()


def _summary(letter: StoredDeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "created_at": letter.created_at.isoformat(),
        "source": letter.source,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "error_class": letter.error_class,
        "error_message": letter.error_message[:200],
        "attempts": letter.attempts,
        "replayed_at": letter.replayed_at.isoformat() if letter.replayed_at else None,
    }


class _Progress:
    """Replay progress: a ``rich`` bar on a terminal; piped, ``verb done/total`` lines at
    every tenth and at the end."""

    def __init__(self, console: Console, verb: str, total: int) -> None:
        self.console = console
        self.verb = verb
        self.total = total
        self.step = max(1, total // 10)
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _Progress:
        if self.console.colour and self.total:
            self._bar = Progress(
                TextColumn(self.verb),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console.rich,
            )
            self._task = self._bar.add_task(self.verb, total=self.total)
            self._bar.start()
        return self

    def __call__(self, done: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done)
        elif done % self.step == 0 or done == self.total:
            self.console.line(f"{self.verb} {done}/{self.total}")

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


async def _replay(
    settings: Settings,
    database: Database,
    letters: list[StoredDeadLetter],
    progress: Callable[[int], None],
) -> int:
    admin = DeadLetterAdmin()
    outbox = OutboxStore()
    for done, letter in enumerate(letters, start=1):
        headers = {"dlq.replayed-from": str(letter.id)}
        original_key = letter.headers.get(IDEMPOTENCY_KEY)
        if original_key:
            headers[IDEMPOTENCY_KEY] = original_key
        async with database.connection() as conn, conn.transaction():
            await outbox.add(
                conn,
                OutboxRecord(
                    topic=letter.topic,
                    key=letter.key,
                    value=letter.payload,
                    headers=headers,
                    idempotency_key=f"replay:{letter.id}:{uuid.uuid4()}",
                ),
                settings.outbox_max_attempts,
            )
            await admin.mark_replayed(conn, letter.id)
        progress(done)
    return len(letters)


async def run_dlq(
    settings: Settings,
    action: str,
    selection: DeadLetterFilter,
    *,
    limit: int,
    dry_run: bool,
    as_json: bool,
    console: Console | None = None,
    purge_all: bool = False,
) -> int:
    """Run one dlq action; return how many dead letters it concerned.

    ``purge`` with a selection that filters nothing is refused unless ``purge_all``.
    """
    console = console or Console()
    if action not in ACTIONS:
        raise ConfigurationError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    if action == "show" and not selection.ids:
        raise ConfigurationError("dlq show needs the id of a dead letter (see dlq list)")
    if action == "purge" and not selection.narrowed and not purge_all:
        raise ConfigurationError(
            "dlq purge without a filter would delete every dead letter: add --all to mean "
            "it, or select some (ids, --older-than 30d, --since 2h, --topic, --error)"
        )
    admin = DeadLetterAdmin()
    async with Database(settings) as database:
        async with database.connection() as conn:
            if action == "purge":
                count = await admin.count(conn, selection)
                if not dry_run:
                    count = await admin.purge(conn, selection)
                verb = "would purge" if dry_run else "purged"
                console.line(f"{verb} {count} dead letter(s)")
                return count
            letters = await admin.select(conn, selection, limit if action == "list" else None)
        if action == "list":
            for letter in letters:
                summary = _summary(letter)
                if as_json:
                    console.line(dump_json(summary))
                else:
                    replayed = " (replayed)" if letter.replayed_at else ""
                    console.line(
                        f"{letter.id:>6}  {letter.created_at:%Y-%m-%d %H:%M:%S}  {letter.topic}"
                        f"[{letter.partition}]@{letter.offset}  {letter.error_class}: "
                        f"{letter.error_message[:80]}{replayed}"
                    )
            if not as_json:
                console.line(f"{len(letters)} dead letter(s)")
            return len(letters)
        if action == "show":
            if not letters:
                raise ConfigurationError(f"no dead letter with id {list(selection.ids)}")
            for letter in letters:
                document = _summary(letter) | {
                    "error_message": letter.error_message,
                    "key": _text(letter.key),
                    "payload": _text(letter.payload),
                    "headers": letter.headers,
                }
                console.line(dump_json(document) if as_json else _pretty(document))
            return len(letters)
        if dry_run:
            for letter in letters:
                console.line(f"would replay {letter.id} to {letter.topic}")
            console.line(f"would replay {len(letters)} dead letter(s)")
            return len(letters)
        with _Progress(console, "replayed", len(letters)) as progress:
            sent = await _replay(settings, database, letters, progress)
        console.line(f"replayed {sent} dead letter(s) through the outbox")
        return sent


def _pretty(document: dict[str, Any]) -> str:
    lines = []
    for name, value in document.items():
        if name == "headers":
            lines.append("headers:")
            lines += [f"  {k}: {str(v)[:300]}" for k, v in sorted(value.items())]
        else:
            lines.append(f"{name}: {value}")
    return "\n".join(lines)


def register(app: StreamsApp) -> None:
    """Declare ``dlq list|show|replay|purge`` on ``app``."""
    import click
    from faust.cli import argument, option

    settings = app.settings

    @app.command(
        argument("action", type=click.Choice(list(ACTIONS))),
        argument("ids", nargs=-1, type=int),
        option("--topic", default=None, help="Only dead letters from this original topic."),
        option("--error", default=None, help="Only error classes containing this text."),
        option("--since", default=None, help="Only NEWER than this (30m, 2h, 1d)."),
        option(
            "--older-than",
            "older_than",
            default=None,
            help="Only OLDER than this (30d, 2w): retention clean-up.",
        ),
        option("--limit", default=100, type=int, help="At most this many (list)."),
        option("--include-replayed", is_flag=True, default=False, help="Also replayed ones."),
        option(
            "--all",
            "purge_all",
            is_flag=True,
            default=False,
            help="purge: allow purging with no filter (every dead letter).",
        ),
        option("--dry-run", is_flag=True, default=False, help="Say what would happen."),
        option("--json", "as_json", is_flag=True, default=False, help="JSON output."),
    )
    async def dlq(
        self: Any,
        action: str,
        ids: tuple[int, ...],
        topic: str | None,
        error: str | None,
        since: str | None,
        older_than: str | None,
        limit: int,
        include_replayed: bool,
        purge_all: bool,
        dry_run: bool,
        as_json: bool,
    ) -> None:
        """Dead letters: list, show ID, replay [IDS] (to their topic), purge."""
        try:
            selection = build_filter(
                settings,
                action,
                ids=ids,
                topic=topic,
                error=error,
                since=since,
                older_than=older_than,
                include_replayed=include_replayed,
            )
            await run_dlq(
                settings,
                action,
                selection,
                limit=limit,
                dry_run=dry_run,
                as_json=as_json,
                purge_all=purge_all,
            )
        except ResilienceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: faust -A streams dlq ...")
