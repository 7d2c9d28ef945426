"""The demo's final count: sent, answered, duplicated, lost (messages and uploads), and
what happened on the way."""

from __future__ import annotations

import itertools
import textwrap
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from demo.observer import SeenReply, SentMessage, UploadCount
from demo.scenarios import ScenarioResult, is_placeholder
from demo.ui import UI
from sa01.outbox.producer import DeliveryPath
from schemas.messages import DegradationEvent, scoped_key

__all__ = ["Summary", "print_summary", "tally"]


@dataclass
class Summary:
    """Counts at the end of the demo (``lost``, ``duplicates``, ``uploads_lost`` and
    ``uploads_duplicated`` must be 0)."""

    sent: int
    via_kafka: int
    via_outbox: int
    replies: int
    answered: int
    delayed: int
    duplicates: int
    lost: int
    dead_letters: int
    failovers: int
    events: int
    out_of_order: int
    memories_stored: int
    memories_pending: int
    not_remembered: int
    outbox_peak: int
    outbox_left: int
    seconds: float
    voice_messages: int = 0
    uploads_sent: int = 0
    uploads_stored: int = 0
    uploads_lost: int = 0
    uploads_duplicated: int = 0
    uploads_queued: int = 0
    uploads_temporary_left: int = 0
    failover_pairs: dict[str, int] = field(default_factory=dict)
    transitions: dict[str, list[str]] = field(default_factory=dict)
    degraded: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    voice_providers: dict[str, int] = field(default_factory=dict)
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing duplicated: messages and uploads."""
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.uploads_lost == 0
            and self.uploads_duplicated == 0
        )

    @property
    def scenarios_ok(self) -> bool:
        """No scenario failed (skipped ones do not count)."""
        return all(s["status"] != "failed" for s in self.scenarios)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready document (``ok`` and ``scenarios_ok`` included)."""
        document = asdict(self)
        document["ok"] = self.ok
        document["scenarios_ok"] = self.scenarios_ok
        return document


def _out_of_order(sent: Sequence[SentMessage], replies: Sequence[SeenReply]) -> int:
    """Replies that arrived before a reply to an earlier message of the same session."""
    position = {s.message.message_id: n for n, s in enumerate(sent)}
    first: dict[str, SeenReply] = {}
    for seen in replies:
        first.setdefault(seen.reply.in_reply_to, seen)
    by_session: dict[str, list[SeenReply]] = defaultdict(list)
    for seen in first.values():
        if seen.reply.in_reply_to in position:
            by_session[seen.reply.session_id].append(seen)
    wrong = 0
    for seens in by_session.values():
        ordered = sorted(seens, key=lambda s: (s.partition, s.offset))
        for earlier, later in itertools.pairwise(ordered):
            if position[later.reply.in_reply_to] < position[earlier.reply.in_reply_to]:
                wrong += 1
    return wrong


def tally(
    *,
    sent: Sequence[SentMessage],
    replies: Sequence[SeenReply],
    events: Sequence[DegradationEvent],
    failovers: dict[tuple[str, str], int],
    dead_letters: int,
    memory_keys: set[str],
    memories_pending: int,
    outbox_peak: int,
    outbox_left: int,
    results: Sequence[ScenarioResult],
    seconds: float,
    uploads: UploadCount | None = None,
) -> Summary:
    """Count what was sent against what users received (and uploads against S3)."""
    ids = {s.message.message_id for s in sent}
    # SomaBrain keys a memory by its tenant and message id.
    remembered_as = {scoped_key(s.message.tenant_id, s.message.message_id) for s in sent}
    ours = [r for r in replies if r.reply.in_reply_to in ids]
    copies = Counter(r.reply.message_id for r in ours)
    # Answered means a full answer: the "answer delayed" placeholder does not count.
    answered = {r.reply.in_reply_to for r in ours if not is_placeholder(r)}
    delayed = {r.reply.in_reply_to for r in ours if is_placeholder(r)}
    transitions: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if not transitions[event.service] and event.previous_state is not None:
            transitions[event.service].append(event.previous_state.value)
        transitions[event.service].append(event.state.value)
    degraded = Counter(name for r in ours for name in r.reply.degraded)
    voice = {s.message.message_id for s in sent if s.message.voice}
    spoken: dict[str, str] = {}
    for seen in ours:
        if seen.reply.in_reply_to in voice and seen.reply.voice_provider is not None:
            spoken.setdefault(seen.reply.in_reply_to, seen.reply.voice_provider)
    uploads = uploads or UploadCount(0, 0, 0, 0, 0, 0)
    return Summary(
        sent=len(sent),
        via_kafka=sum(1 for s in sent if s.path is DeliveryPath.KAFKA),
        via_outbox=sum(1 for s in sent if s.path is DeliveryPath.OUTBOX),
        replies=len(ours),
        answered=len(answered),
        delayed=len(delayed),
        duplicates=sum(n - 1 for n in copies.values()),
        lost=len(ids - answered),
        dead_letters=dead_letters,
        failovers=sum(failovers.values()),
        events=len(events),
        out_of_order=_out_of_order(sent, ours),
        memories_stored=len(memory_keys & remembered_as),
        memories_pending=memories_pending,
        not_remembered=len(remembered_as - memory_keys),
        outbox_peak=outbox_peak,
        outbox_left=outbox_left,
        seconds=round(seconds, 1),
        voice_messages=len(voice),
        uploads_sent=uploads.sent,
        uploads_stored=uploads.stored,
        uploads_lost=uploads.lost,
        uploads_duplicated=uploads.duplicated,
        uploads_queued=uploads.queued,
        uploads_temporary_left=uploads.temporary_left,
        failover_pairs={f"{a} -> {b}": n for (a, b), n in sorted(failovers.items()) if n},
        transitions=dict(sorted(transitions.items())),
        degraded=dict(sorted(degraded.items())),
        models=dict(Counter(r.reply.model for r in ours).most_common()),
        voice_providers=dict(Counter(spoken.values()).most_common()),
        scenarios=[
            {
                "key": r.scenario.key,
                "number": r.scenario.number,
                "title": r.scenario.title,
                "status": r.status,
                "checks": len(r.checks),
                "failed_checks": [text for text, ok in r.checks if not ok],
                "seconds": round(r.seconds, 1),
                "note": r.note,
            }
            for r in results
        ],
        lost_ids=sorted(ids - answered),
    )


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


def print_summary(ui: UI, summary: Summary) -> None:
    """The readable summary: one ``name  value  details`` line per count."""
    ui.heading("Summary")

    def row(name: str, value: object, detail: str = "", *, good: bool | None = None) -> None:
        text = f"{value!s:>6}"
        if good is not None:
            text = ui.paint(text, "green" if good else "red")
        ui.line(f"  {name:<18}{text}  {ui.paint(detail, 'dim')}".rstrip())

    row(
        "messages sent",
        summary.sent,
        f"{summary.via_kafka} acknowledged by Kafka, {summary.via_outbox} kept in the outbox",
    )
    models = ", ".join(f"{m} {n}" for m, n in summary.models.items())
    row("replies received", summary.replies, f"by model: {models}")
    delayed = f" ({summary.delayed} after an immediate 'answer delayed')" if summary.delayed else ""
    row("answered", summary.answered, f"messages answered in full{delayed}")
    row("duplicates", summary.duplicates, "replies delivered twice", good=summary.duplicates == 0)
    row("lost", summary.lost, "messages without a full answer", good=summary.lost == 0)
    row("dead letters", summary.dead_letters, "", good=summary.dead_letters == 0)
    arrow = f" {ui.arrow} "
    row("failovers", summary.failovers, "llm_failover_count, from -> to model")
    for pair, count in summary.failover_pairs.items():
        ui.line(f"  {'':<18}{count:>6}  {pair.replace(' -> ', arrow)}")
    row("events", summary.events, "on degradation.events; services that changed:")
    steady: list[str] = []
    for service, states in summary.transitions.items():
        if len(states) > 1:
            ui.line(f"  {'':<18}{'':>6}  {service:<14} {arrow.join(states)}")
        else:
            steady.append(f"{service} {states[0]}")
    for text in textwrap.wrap("steady: " + ", ".join(steady), 70) if steady else []:
        ui.line(f"  {'':<18}{'':>6}  {ui.paint(text, 'dim')}")
    degraded = ", ".join(f"{k} {v}" for k, v in summary.degraded.items()) or "none"
    row("degraded replies", sum(summary.degraded.values()), f"by service: {degraded}")
    row("out of order", summary.out_of_order, "replies ahead of an earlier message's")
    missing = ""
    if summary.not_remembered:
        why = " (answered after a delay)" if summary.delayed else ""
        missing = f"; not remembered: {summary.not_remembered}{why}"
    row(
        "memories",
        summary.memories_stored,
        f"stored in SomaBrain; pending: {summary.memories_pending}{missing}",
    )
    row("outbox", summary.outbox_left, f"rows left (peak {summary.outbox_peak})")
    voices = ", ".join(f"{p} {n}" for p, n in summary.voice_providers.items()) or "none"
    row("voice messages", summary.voice_messages, f"spoken by: {voices}")
    row(
        "uploads sent",
        summary.uploads_sent,
        f"files uploaded with a message; {summary.uploads_queued} queued on upload.retry",
    )
    row(
        "uploads stored",
        summary.uploads_stored,
        f"in S3, byte for byte; temporary copies left: {summary.uploads_temporary_left}",
    )
    row(
        "uploads lost",
        summary.uploads_lost,
        "not in S3 (or not the bytes sent)",
        good=summary.uploads_lost == 0,
    )
    row(
        "uploads duplicated",
        summary.uploads_duplicated,
        "tasks published twice on upload.retry",
        good=summary.uploads_duplicated == 0,
    )
    for scenario in summary.scenarios:
        number = scenario["number"] or "warm-up"
        status = str(scenario["status"])
        style = {"passed": "green", "failed": "red"}.get(status, "yellow")
        why = f"  {scenario['note']}" if scenario["note"] else ""
        seconds = f" ({_minutes(scenario['seconds'])})" if status != "skipped" else ""
        ui.line(
            f"  scenario {number!s:<8}{ui.paint(f'{status:>7}', style)}  "
            f"{scenario['title']}{seconds}{ui.paint(why, 'dim')}"
        )
    row("time", _minutes(summary.seconds))
    ui.line()
    uploads = (
        f" {summary.uploads_stored}/{summary.uploads_sent} uploads stored in S3, "
        f"{summary.uploads_lost} lost, {summary.uploads_duplicated} duplicated."
        if summary.uploads_sent
        else ""
    )
    if summary.ok:
        verdict = (
            f"RESULT: everything answered, nothing lost: {summary.answered}/{summary.sent} "
            f"messages answered, 0 lost, 0 duplicated.{uploads}"
        )
        ui.line(ui.paint(verdict, "green"))
    else:
        verdict = (
            f"RESULT: {summary.lost} lost and {summary.duplicates} duplicated of "
            f"{summary.sent} messages.{uploads}"
        )
        ui.line(ui.paint(verdict, "red"))
        for message_id in summary.lost_ids[:10]:
            ui.line(f"  no reply to {message_id}")
    if not summary.scenarios_ok:
        failed = [s for s in summary.scenarios if s["status"] == "failed"]
        for scenario in failed:
            for text in scenario["failed_checks"] or [scenario["note"]]:
                ui.line(ui.paint(f"  scenario {scenario['key']}: {text}", "red"))
