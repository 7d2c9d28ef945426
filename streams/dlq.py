"""``faust -A streams dlq list|show|replay|purge``: dead-letter administration.

The ``dead_letter_message`` table indexes every dead letter (the agent's and the
relay's); the ``.dlq`` topics carry the same records for stream tools. Replay sends
a dead letter's original key and bytes back to its original topic through the outbox
(so it is durable and published exactly once) and marks it replayed.
"""

from __future__ import annotations

import base64
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any

from core.errors import ConfigurationError
from core.settings import Settings
from outbox.database import Database
from outbox.dead_letters import DeadLetterAdmin, DeadLetterFilter, StoredDeadLetter
from outbox.store import OutboxRecord, OutboxStore
from schemas.headers import IDEMPOTENCY_KEY
from streams.console import Console, dump_json

__all__ = ["ACTIONS", "parse_since", "run_dlq"]

ACTIONS = ("list", "show", "replay", "purge")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """``90``, ``30m``, ``2h``, ``1d`` as seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigurationError(f"--since {text!r}: expected a duration such as 30m, 2h or 1d")
    return float(match[1]) * _UNITS[match[2]]


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
    """``done/total`` on one updating line on a TTY, every tenth elsewhere."""

    def __init__(self, console: Console, verb: str, total: int) -> None:
        self.console = console
        self.verb = verb
        self.total = total
        self.step = max(1, total // 10)

    def __call__(self, done: int) -> None:
        if self.console.colour:
            self.console.stream.write(f"\r{self.verb} {done}/{self.total}")
            self.console.stream.flush()
            if done == self.total:
                self.console.stream.write("\n")
        elif done % self.step == 0 or done == self.total:
            self.console.line(f"{self.verb} {done}/{self.total}")


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
) -> int:
    """Run one dlq action; return how many dead letters it concerned."""
    console = console or Console()
    if action not in ACTIONS:
        raise ConfigurationError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    if action == "show" and not selection.ids:
        raise ConfigurationError("dlq show needs the id of a dead letter (see dlq list)")
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
        sent = await _replay(
            settings, database, letters, _Progress(console, "replayed", len(letters))
        )
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: faust -A streams dlq ...")
