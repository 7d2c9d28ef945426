"""The seed's degradation scenarios (SRS section 9), one function each, and what they share.

A scenario is a :class:`Scenario` in :data:`SCENARIOS`: its seed number, the seed's row
(detection, response, user impact, recovery) and an async function that drives the stack
through a :class:`Demo`. A scenario that cannot run here has no function (or, for
Kafka, a reason found at run time) and is shown as skipped.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from demo.observer import (
    TENANT,
    Backlog,
    Outgoing,
    SeenReply,
    Sender,
    SentMessage,
    TopicReader,
    count_uploads,
    upload,
    voice_note,
)
from demo.stack import CHAT_CHAIN, DemoStack, StackError
from demo.ui import UI
from loopback import FailureMode, transcript_of
from sa01.outbox.producer import DeliveryPath
from schemas.messages import (
    ConversationInbound,
    ConversationReply,
    DegradationEvent,
    scoped_key,
    tenant_upload_key,
)

__all__ = [
    "PLACEHOLDER_MODEL",
    "SCENARIOS",
    "UPLOADS_PREFIX",
    "WARM_UP",
    "Demo",
    "Scenario",
    "ScenarioResult",
    "find_scenarios",
    "is_placeholder",
]

Status = Literal["passed", "failed", "skipped"]
ScenarioRun = Callable[["Demo"], Awaitable[None]]
#: How many replies of one batch are printed in full (the rest are counted).
SHOWN_PER_BATCH: Final = 4
#: The model of the immediate reply when every model is down (the real answer follows).
PLACEHOLDER_MODEL: Final = "none"
#: Where the uploads of scenario 4 are stored (in S3 and, meanwhile, on the local disk).
UPLOADS_PREFIX: Final = tenant_upload_key(TENANT, "files/")


def memory_key(message: ConversationInbound) -> str:
    """The key SomaBrain stores a message's exchange under: its tenant and message id."""
    return scoped_key(message.tenant_id, message.message_id)


VOICE_FALLBACK: Final = "Voice in fallback mode"
UPLOAD_QUEUED: Final = "Upload queued"


@dataclass(frozen=True)
class Scenario:
    """One scenario of the demo: the seed's row and the function that shows it."""

    key: str
    """The name for ``--scenario``."""
    number: int
    """The seed's scenario number (0: the warm-up)."""
    title: str
    detection: str
    response: str
    impact: str
    recovery: str
    run: ScenarioRun | None
    """None while the scenario cannot run here (see ``unavailable``)."""
    unavailable: str = ""


@dataclass
class ScenarioResult:
    """How one scenario went: its checks, in order."""

    scenario: Scenario
    status: Status = "passed"
    checks: list[tuple[str, bool]] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""


class ScenarioFailed(Exception):
    """A scenario cannot go on (the stack did not do what the next step needs)."""


class Demo:
    """The running demo: the stack, what it watches, and the steps scenarios are made of."""

    def __init__(
        self,
        ui: UI,
        stack: DemoStack,
        reader: TopicReader,
        backlog: Backlog,
        sender: Sender,
        *,
        fast: bool,
    ) -> None:
        self.ui = ui
        self.stack = stack
        self.reader = reader
        self.backlog = backlog
        self.sender = sender
        self.fast = fast
        self.result: ScenarioResult | None = None
        self.outbox_peak = 0
        self.uploads: dict[str, bytes] = {}
        """Every upload sent: storage key to bytes."""
        self._labels: dict[str, str] = {}
        self._shown: set[str] = set()
        self._session_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ checks

    def check(self, ok: bool, text: str) -> bool:
        """Record and print one expectation of the current scenario."""
        if self.result is not None:
            self.result.checks.append((text, ok))
            if not ok:
                self.result.status = "failed"
        (self.ui.ok if ok else self.ui.bad)(text)
        return ok

    def count(self, normal: int, fast: int) -> int:
        """``normal``, or ``fast`` with ``--fast``."""
        return fast if self.fast else normal

    # ------------------------------------------------------------------ live output

    async def echo(self) -> None:
        """Print replies and degradation events as they arrive (runs until cancelled)."""
        while True:
            replies, events = self.reader.take_new()
            first = [e for e in events if e.previous_state is None]
            if first:
                self.ui.line(self.format_first(first))
            for event in events:
                if event.previous_state is not None:
                    self.ui.line(self.format_event(event))
            for seen in replies:
                in_reply_to = seen.reply.in_reply_to
                if in_reply_to in self._shown:
                    self.ui.line(self.format_reply(seen))
            await asyncio.sleep(0.2)

    def format_first(self, events: Sequence[DegradationEvent]) -> str:
        """The first state the monitor announces of several services (wrapped lines)."""
        ui = self.ui
        lines: list[str] = []
        line, width = f"    {ui.paint('events', 'magenta')} first states:", 24
        for event in sorted(events, key=lambda e: e.service):
            state = event.state.value
            if width + len(event.service) + len(state) + 3 > 100:
                lines.append(line)
                line, width = " " * 24, 24
            line += f" {event.service} {ui.paint(state, state)},"
            width += len(event.service) + len(state) + 3
        lines.append(line.rstrip(","))
        return "\n".join(lines)

    def format_event(self, event: DegradationEvent) -> str:
        """One line per degradation event."""
        ui = self.ui
        before = event.previous_state.value if event.previous_state else "unknown"
        after = event.state.value
        reason = f"  {event.reason[:70]}" if event.reason else ""
        circuit = f"  circuit={event.circuit.value}" if event.circuit.value != "closed" else ""
        return (
            f"    {ui.paint('event', 'magenta')}  {event.service:<14} "
            f"{ui.paint(before, before)} {ui.arrow} {ui.paint(after, after)}{circuit}"
            f"{ui.paint(reason, 'dim')}"
        )

    def format_reply(self, seen: SeenReply) -> str:
        """One line per reply the user received."""
        ui = self.ui
        reply = seen.reply
        label = self._labels.get(reply.in_reply_to, reply.in_reply_to[:8])
        extra = ""
        if reply.voice_provider is not None:
            spoken = " +audio" if reply.attachments else ""
            voice = f"voice={reply.voice_provider}{spoken}"
            extra += "  " + ui.paint(voice, "bold" if spoken else "yellow")
        if reply.degraded:
            extra += "  " + ui.paint(f"degraded={list(reply.degraded)}", "yellow")
        if reply.notices:
            extra += "  " + ui.paint(f"notices={list(reply.notices)}", "yellow")
        text = reply.text if len(reply.text) <= 60 else reply.text[:57] + "..."
        quoted = ui.paint(f'"{text}"', "dim")
        return (
            f"    {ui.paint('reply', 'blue')}  {label:<12} "
            f"model={ui.paint(reply.model, 'bold')}{extra}  {quoted}"
        )

    # ------------------------------------------------------------------ steps

    async def send(
        self,
        scenario: str,
        texts: Sequence[tuple[str, str] | Outgoing],
        *,
        pace: float = 0.0,
        label: str = "sending",
        watch_outbox: bool = False,
    ) -> list[SentMessage]:
        """Send ``(session, text)`` messages (or :class:`Outgoing` ones) in order, with a
        progress bar."""
        sent: list[SentMessage] = []
        paths = {DeliveryPath.KAFKA: 0, DeliveryPath.OUTBOX: 0}
        with self.ui.progress(label, len(texts), unit="messages") as bar:
            for item in texts:
                outgoing = item if isinstance(item, Outgoing) else Outgoing(*item)
                session = outgoing.session
                message = await self.sender.send(scenario, outgoing)
                for attachment in outgoing.attachments:
                    data = attachment.content()
                    key = tenant_upload_key(TENANT, attachment.storage_key)
                    if data is not None and key.startswith(UPLOADS_PREFIX):
                        self.uploads[key] = data
                number = self._session_counts.get(session, 0) + 1
                self._session_counts[session] = number
                self._labels[message.message.message_id] = f"{session} #{number}"
                if len(sent) < SHOWN_PER_BATCH or len(texts) <= SHOWN_PER_BATCH + 2:
                    self._shown.add(message.message.message_id)
                sent.append(message)
                paths[message.path] += 1
                detail = f"via Kafka {paths[DeliveryPath.KAFKA]}"
                detail += f", via the outbox {paths[DeliveryPath.OUTBOX]}"
                if watch_outbox:
                    backlog = await self.backlog.outbox()
                    self.outbox_peak = max(self.outbox_peak, backlog)
                    detail += f"  | outbox backlog {backlog} rows"
                bar.update(len(sent), detail=detail)
                if pace:
                    await asyncio.sleep(pace)
        return sent

    async def replies_to(
        self,
        sent: Sequence[SentMessage],
        *,
        timeout: float = 90.0,
        label: str = "replies",
        quiet: bool = False,
        real: bool = False,
    ) -> dict[str, ConversationReply]:
        """Wait until each of ``sent`` has a reply; the first reply of each, by message id.

        With ``real``, only full answers count, not the "answer delayed" placeholder.
        """
        wanted = {s.message.message_id for s in sent}
        found: dict[str, ConversationReply] = {}
        deadline = time.monotonic() + timeout
        with self.ui.progress(label, len(wanted), unit="answered") as bar:
            while True:
                for seen in self.reader.replies:
                    if seen.reply.in_reply_to in wanted and not (real and is_placeholder(seen)):
                        found.setdefault(seen.reply.in_reply_to, seen.reply)
                bar.update(len(found))
                if len(found) == len(wanted) or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
            hidden = len(found) - len(wanted & self._shown)
            bar.close(f"(+{hidden} more not printed)" if hidden > 0 and not quiet else "")
        await asyncio.sleep(0.3)  # let the echo print the last shown replies
        return found

    async def wait_for(
        self, predicate: Callable[[], Awaitable[bool]], *, timeout: float
    ) -> float | None:
        """Poll ``predicate`` until it holds; seconds waited, or None after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if await predicate():
                return time.monotonic() - started
            await asyncio.sleep(0.25)
        return None

    async def wait_state(self, service: str, state: str, *, timeout: float = 45.0) -> float | None:
        """Wait until the worker's ``/status`` shows ``service`` in ``state``."""

        async def reached() -> bool:
            return await self.stack.service_state(service) == state

        return await self.wait_for(reached, timeout=timeout)

    async def expect_state(self, service: str, state: str, *, timeout: float = 45.0) -> None:
        """Wait for a state in ``/status`` and check it (the scenario stops when it never comes)."""
        waited = await self.wait_state(service, state, timeout=timeout)
        if waited is None:
            self.check(False, f"the worker never showed {service} {state} (waited {timeout:.0f}s)")
            raise ScenarioFailed(f"{service} never became {state}")
        self.check(True, f"the worker's /status shows {service} {state} after {waited:.1f}s")

    async def expect_events(
        self, service: str, states: Sequence[str], since: int, *, timeout: float = 30.0
    ) -> None:
        """Check that ``degradation.events`` carried ``states`` for ``service`` after ``since``."""

        async def arrived() -> bool:
            return _contains_in_order(self.transitions(service, since), states)

        if await self.wait_for(arrived, timeout=timeout) is not None:
            await asyncio.sleep(0.3)  # let the echo print the events before the check
        seen = self.transitions(service, since)
        self.check(
            _contains_in_order(seen, states),
            f"degradation.events: {service} {' -> '.join(seen) or '(nothing)'}",
        )

    def transitions(self, service: str, since: int) -> list[str]:
        """The states announced for ``service`` in the events read after index ``since``."""
        return [e.state.value for e in self.reader.events[since:] if e.service == service]

    async def drain(
        self,
        label: str,
        count: Callable[[], Awaitable[int]],
        *,
        timeout: float,
        unit: str,
        initial: int = 0,
    ) -> tuple[bool, int]:
        """A bar that fills as ``count`` falls to 0 (from ``initial`` when larger); returns
        (emptied, the largest count seen)."""
        peak = max(await count(), initial, 1)
        deadline = time.monotonic() + timeout
        with self.ui.progress(label, peak, unit=unit) as bar:
            while True:
                left = await count()
                peak = max(peak, left)
                bar.update(peak - left, total=peak, detail=f"{left} left")
                if left == 0 or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.25)
        return left == 0, peak

    async def fill(
        self,
        label: str,
        count: Callable[[], Awaitable[int]],
        total: int,
        *,
        timeout: float,
        unit: str,
    ) -> int:
        """A bar that fills as ``count`` rises to ``total``; returns the last count."""
        deadline = time.monotonic() + timeout
        with self.ui.progress(label, total, unit=unit) as bar:
            while True:
                done = await count()
                bar.update(done)
                if done >= total or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.25)
        return done

    async def show_health(
        self, services: Sequence[str], *, circuits: bool = True
    ) -> dict[str, dict[str, Any]]:
        """Print ``services`` as the worker's ``/status`` has them (state, reason), with
        the state of each provider's circuit from ``/metrics``; return their entries.

        A store's probe checks the store itself and never reads its circuit, whose gauge
        then moves only with calls: ``circuits=False`` leaves it out."""
        ui = self.ui
        document = await self.stack.status() or {}
        found: dict[str, Any] = document.get("services", {})
        states = {
            labels.get("name", ""): round(value)
            for name, labels, value in await self.stack.metrics()
            if name == "circuit_breaker_state"
        }
        shown: dict[str, dict[str, Any]] = {}
        for service in services:
            entry = found.get(service) or {}
            state = str(entry.get("state", "unknown"))
            chain, _, provider = service.partition(".")
            code = states.get(f"{chain}:{provider}") if provider and circuits else None
            circuit = f"circuit {_CIRCUIT_STATES.get(code, '?')}" if code is not None else ""
            reason = str(entry.get("reason") or "")
            reason = reason if len(reason) <= 58 else reason[:55] + "..."
            painted = ui.paint(f"{state:<11}", state)
            text = f"    {ui.paint('status', 'cyan')} {service:<15} {painted} {circuit:<17}"
            ui.line(f"{text} {ui.paint(reason, 'dim')}".rstrip())
            shown[service] = entry
        return shown


#: ``circuit_breaker_state`` gauge values.
_CIRCUIT_STATES: Final = {0: "closed", 1: "open", 2: "half_open", 3: "forced_open", 4: "disabled"}


def is_placeholder(seen: SeenReply) -> bool:
    """True for the immediate "answer delayed" reply sent while every model is down."""
    return seen.reply.model == PLACEHOLDER_MODEL


def _contains_in_order(seen: Sequence[str], wanted: Sequence[str]) -> bool:
    position = 0
    for state in seen:
        if position < len(wanted) and state == wanted[position]:
            position += 1
    return position == len(wanted)


# ---------------------------------------------------------------------- the scenarios

_MODEL_NAMES: Final = {model: model.split("/", 1)[1] for model in CHAT_CHAIN}


def _by(reply: ConversationReply, model: str) -> bool:
    """True when ``reply`` was written by ``model`` (providers report it without prefix)."""
    return reply.model in (model, _MODEL_NAMES[model])


async def warm_up(demo: Demo) -> None:
    """Everything healthy: the primary model answers and each exchange is remembered."""
    primary = CHAT_CHAIN[0]
    ui = demo.ui
    ui.step("A user says hello while every service is healthy")
    questions = [
        "Hello! I'm Ada and I'd like help with my account.",
        "Can you remind me what plan I'm on?",
        "Thanks, that's all for now.",
    ][: demo.count(3, 2)]
    sent = await demo.send("healthy", [("welcome", q) for q in questions])
    replies = await demo.replies_to(sent)
    demo.check(len(replies) == len(sent), f"{len(replies)}/{len(sent)} answered")
    demo.check(
        all(_by(r, primary) for r in replies.values()),
        f"answered by the primary model {primary}",
    )
    demo.check(all(not r.degraded for r in replies.values()), "no reply is degraded")
    somabrain = demo.stack.somabrain
    wanted = {memory_key(s.message) for s in sent}

    async def remembered() -> bool:
        return wanted <= {m.key for m in somabrain.memories()}

    waited = await demo.wait_for(remembered, timeout=45)
    demo.check(waited is not None, "each exchange is remembered in SomaBrain")


async def somabrain_unavailable(demo: Demo) -> None:
    """Seed scenario 1: SomaBrain hangs; replies use session context; memories wait, then sync."""
    ui = demo.ui
    somabrain = demo.stack.somabrain
    since = len(demo.reader.events)
    ui.step("SomaBrain stops answering: its /health and memory API hang (HTTP timeout)")
    somabrain.set_mode(FailureMode.HANG)
    await demo.expect_state("somabrain", "unavailable")
    before = await demo.backlog.pending_memories()
    texts = [
        "Remember that my favourite colour is green.",
        "What did I tell you about colours?",
        "I'm travelling to Lisbon next week.",
        "Any tips for my trip?",
        "Please keep answers short.",
    ][: demo.count(5, 3)]
    ui.step(f"The user keeps talking: {len(texts)} messages while SomaBrain is down")
    sent = await demo.send("somabrain", [("memory", t) for t in texts])
    replies = await demo.replies_to(sent)
    demo.check(len(replies) == len(sent), f"{len(replies)}/{len(sent)} answered at once")
    demo.check(
        all("somabrain" in r.degraded for r in replies.values()),
        'every reply says degraded=["somabrain"]: context from the session\'s recent turns (Redis)',
    )
    ui.note("each exchange is kept in pending_memory until SomaBrain is back")
    wanted = before + len(sent)

    async def kept() -> bool:
        return await demo.backlog.pending_memories() >= wanted

    with ui.progress("memories kept", len(sent), unit="in pending_memory") as bar:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not await kept():
            bar.update(max(0, await demo.backlog.pending_memories() - before))
            await asyncio.sleep(0.25)
        kept_now = await demo.backlog.pending_memories() - before
        bar.update(kept_now)
    demo.check(kept_now >= len(sent), f"{kept_now} memories wait in pending_memory")
    ui.step("SomaBrain answers again")
    somabrain.set_mode(FailureMode.OK)
    await demo.expect_state("somabrain", "healthy")
    emptied, _ = await demo.drain(
        "memories syncing",
        demo.backlog.pending_memories,
        timeout=60,
        unit="synced",
        initial=before + kept_now,
    )
    ids = [memory_key(s.message) for s in sent]
    stored = [m.key for m in somabrain.memories() if m.key in set(ids)]
    demo.check(
        emptied and stored == ids,
        f"pending_memory is empty; SomaBrain holds the {len(ids)} memories in the order "
        f"sent ({len(somabrain.memories())} in all)",
    )
    await demo.expect_events("somabrain", ["unavailable", "healthy"], since)


async def llm_unavailable(demo: Demo) -> None:
    """Seed scenario 2: the primary model fails, the chain's next model answers; then back."""
    ui = demo.ui
    primary, fallback, fallback2 = CHAT_CHAIN
    stack = demo.stack
    since = len(demo.reader.events)
    before = sum((await stack.failovers()).values())
    ui.step(f"The primary model {primary} fails: every call gets HTTP 500")
    stack.primary.set_mode(FailureMode.ERROR_500)
    texts = [
        "Which plan suits a team of five?",
        "Does it include priority support?",
        "How do I upgrade?",
        "Can I pay yearly?",
        "Is there a discount for non-profits?",
    ][: demo.count(5, 3)]
    sent = await demo.send("llm", [("support", t) for t in texts])
    replies = await demo.replies_to(sent)
    demo.check(len(replies) == len(sent), f"{len(replies)}/{len(sent)} answered, none delayed")
    demo.check(
        all(_by(r, fallback) for r in replies.values()),
        f"answered by fallback 1 {fallback} (users see no error)",
    )
    # The event, not /status: the open circuit may already be waiting for its trial call.
    await demo.expect_events("llm", ["degraded"], since)
    after = await stack.failovers()
    moved = sum(after.values()) - before
    demo.check(
        moved >= len(sent),
        f"llm_failover_count moved by {moved} ({primary} -> {fallback}: "
        f"{after.get((primary, fallback), 0)})",
    )
    ui.step(f"Fallback 1 {fallback} is rate-limited too (429, Retry-After 20s)")
    stack.fallback.set_mode(FailureMode.RATE_LIMITED, retry_after_seconds=20)
    more = ["Still there?", "Can you summarise our chat?", "Thanks!"][: demo.count(3, 2)]
    sent2 = await demo.send("llm", [("support", t) for t in more])
    replies2 = await demo.replies_to(sent2)
    demo.check(
        len(replies2) == len(sent2) and all(_by(r, fallback2) for r in replies2.values()),
        f"{len(replies2)}/{len(sent2)} answered by fallback 2 {fallback2}",
    )
    ui.step(f"Fallback 2 {fallback2} fails as well: no model can answer")
    stack.fallback2.set_mode(FailureMode.ERROR_500)
    down = ["Hello? Is anyone there?", "I need an answer about my invoice."][: demo.count(2, 1)]
    sent_down = await demo.send("llm", [("support", t) for t in down])
    placeholders = await demo.replies_to(sent_down)
    demo.check(
        len(placeholders) == len(sent_down)
        and all(r.model == PLACEHOLDER_MODEL and r.notices for r in placeholders.values()),
        f'{len(placeholders)}/{len(sent_down)} answered at once: "answer delayed" (never silent)',
    )
    ui.step("Every model is back; open circuits wait for their half-open trial")
    for server in stack.servers.values():
        server.set_mode(FailureMode.OK)
    await demo.expect_state("llm", "healthy", timeout=stack.options.breaker_wait_seconds + 45)
    owed = await demo.replies_to(sent_down, real=True, label="owed answers", timeout=60)
    demo.check(
        len(owed) == len(sent_down) and all(r.notices for r in owed.values()),
        f"{len(owed)}/{len(sent_down)} owed answers sent, by "
        + ", ".join(sorted({r.model for r in owed.values()})),
    )
    last = ["One more question: what are your opening hours?", "Great, bye!"][: demo.count(2, 1)]
    sent3 = await demo.send("llm", [("support", t) for t in last])
    replies3 = await demo.replies_to(sent3)
    demo.check(
        len(replies3) == len(sent3) and all(_by(r, primary) for r in replies3.values()),
        f"the primary {primary} answers again (its trial call closed the circuit)",
    )
    await demo.expect_events("llm", ["degraded", "healthy"], since)


VOICE_SERVICES: Final = (
    "tts",
    "tts.elevenlabs",
    "tts.openai",
    "tts.kokoro",
    "stt",
    "stt.openai",
    "stt.deepgram",
)
STORAGE_SERVICES: Final = ("storage", "storage.s3", "storage.local")


async def _say(demo: Demo, spoken: str) -> ConversationReply:
    """Send a voice message saying ``spoken``; check it is answered, what was heard."""
    [sent] = await demo.send("audio", [voice_note("voice", spoken)], label="voice message")
    replies = await demo.replies_to([sent], timeout=60)
    reply = replies.get(sent.message.message_id)
    if reply is None:
        demo.check(False, "the voice message was not answered")
        raise ScenarioFailed("a voice message was not answered")
    demo.check(
        reply.text.endswith(spoken),
        f'answered, and the model got what was said ("{spoken}")',
    )
    return reply


async def _check_spoken(demo: Demo, reply: ConversationReply) -> None:
    """Check that the reply's audio is in S3 and speaks the reply's text."""
    if not reply.attachments:
        demo.check(False, "the reply carries its spoken audio")
        return
    key = reply.attachments[0].storage_key
    data = (await demo.stack.s3_objects(key)).get(key)
    demo.check(
        data is not None and transcript_of(data) == reply.text,
        f"the spoken reply is in S3 ({key.split('/', 1)[1]}, {len(data or b'')} bytes) "
        "and says the reply's text",
    )


def _primaries(reply: ConversationReply) -> bool:
    return (
        reply.voice_provider == "elevenlabs"
        and not reply.notices
        and not {"tts", "stt"} & set(reply.degraded)
    )


async def audio_unavailable(demo: Demo) -> None:
    """Seed scenario 3: the voice providers fail one after the other; every voice message
    is answered, with "Voice in fallback mode" once a fallback serves; then the primaries
    serve again after their circuits' trial calls."""
    ui = demo.ui
    stack = demo.stack
    since = len(demo.reader.events)
    before = await stack.provider_failovers()
    ui.step("The voice providers as the worker sees them (TTS and STT chains of the seed)")
    await demo.show_health(VOICE_SERVICES)
    ui.note("kokoro, the third TTS link, is an optional package, not installed here")

    ui.step("A user speaks: OpenAI Whisper transcribes, the models answer, ElevenLabs speaks")
    whisper = stack.openai_audio.call_counts()["openai_stt"]
    first = await _say(demo, "Is it going to rain in Lisbon today?")
    demo.check(
        _primaries(first) and stack.openai_audio.call_counts()["openai_stt"] == whisper + 1,
        "transcribed by OpenAI, spoken by ElevenLabs (the primaries): no notice, not degraded",
    )
    await _check_spoken(demo, first)

    ui.step("ElevenLabs refuses connections: the TTS primary is down")
    stack.elevenlabs.set_mode(FailureMode.REFUSE)
    second = await _say(demo, "Should I take an umbrella?")
    demo.check(
        second.voice_provider == "openai"
        and VOICE_FALLBACK in second.notices
        and "tts" in second.degraded
        and "stt" not in second.degraded,
        f'spoken by OpenAI TTS (fallback 1): notices ["{VOICE_FALLBACK}"], degraded ["tts"]',
    )
    await _check_spoken(demo, second)
    await demo.expect_events("tts.elevenlabs", ["unavailable"], since, timeout=15)

    ui.step("OpenAI audio answers HTTP 500 as well: the STT primary and TTS fallback 1 fail")
    stack.openai_audio.set_mode(FailureMode.ERROR_500)
    heard = stack.deepgram.stt_count
    third = await _say(demo, "What about tomorrow morning?")
    demo.check(
        stack.deepgram.stt_count == heard + 1 and "stt" in third.degraded,
        'Deepgram transcribed it (STT fallback 1): degraded ["stt"]',
    )
    demo.check(
        third.voice_provider == "native"
        and not third.attachments
        and "tts" in third.degraded
        and VOICE_FALLBACK in third.notices,
        "no TTS provider left (kokoro is not installed): the client's own voice speaks the "
        f'reply (voice=native, no audio), notices ["{VOICE_FALLBACK}"]',
    )
    await demo.expect_events("stt.openai", ["unavailable"], since, timeout=15)
    ui.step("The worker's /status: the health of each voice provider")
    health = await demo.show_health(VOICE_SERVICES)
    kokoro = health.get("tts.kokoro", {})
    demo.check(
        kokoro.get("state") == "unavailable" and "not installed" in str(kokoro.get("reason")),
        f"tts.kokoro unavailable: {kokoro.get('reason') or '(no reason)'}",
    )
    after = await stack.provider_failovers()
    moved = {key: n - before.get(key, 0) for key, n in after.items() if key[0] in ("tts", "stt")}
    wanted = [("tts", "elevenlabs", "openai"), ("stt", "openai", "deepgram")]
    demo.check(
        all(moved.get(key, 0) >= 1 for key in wanted),
        "provider_failover_count moved: "
        + ", ".join(f"{c} {a} -> {b} +{n}" for (c, a, b), n in sorted(moved.items()) if n),
    )

    ui.step("ElevenLabs and OpenAI answer again; each open circuit waits for its trial call")
    for server in stack.audio_servers.values():
        server.set_mode(FailureMode.OK)
    timeout = 4 * stack.options.breaker_wait_seconds + 30
    for service in ("tts.elevenlabs", "tts.openai", "stt.openai"):
        await demo.expect_state(service, "healthy", timeout=timeout)
    ui.note("their circuits are half-open: the next voice message makes the trial calls")
    whisper = stack.openai_audio.call_counts()["openai_stt"]
    fourth = await _say(demo, "Thanks, that is all for today.")
    demo.check(
        _primaries(fourth) and stack.openai_audio.call_counts()["openai_stt"] == whisper + 1,
        "the primaries are back: transcribed by OpenAI, spoken by ElevenLabs, no notice",
    )
    await _check_spoken(demo, fourth)
    health = await demo.show_health(VOICE_SERVICES)
    back = ("tts", "tts.elevenlabs", "stt", "stt.openai")
    demo.check(
        all(health.get(name, {}).get("state") == "healthy" for name in back),
        f"{', '.join(back)} healthy again",
    )
    await demo.expect_events("tts.elevenlabs", ["unavailable", "healthy"], since)
    await demo.expect_events("stt.openai", ["unavailable", "healthy"], since)


def _upload_bytes(number: int) -> bytes:
    """A file of a few KiB, different for each upload (random bytes behind a header)."""
    return f"demo upload {number:02d}\n".encode() + os.urandom(1024 * (2 + number % 7))


async def storage_unavailable(demo: Demo) -> None:
    """Seed scenario 4: S3 and the local disk fail; uploads are queued on upload.retry and
    the user reads "Upload queued"; once the stores are back each lands in S3 once."""
    ui = demo.ui
    stack = demo.stack
    since = len(demo.reader.events)
    await demo.expect_state("storage", "healthy")
    ui.step(
        "S3 stops (the loopback server closes its port) and the local disk fails "
        "(the store's directory is now a regular file)"
    )
    await asyncio.to_thread(stack.s3.stop)
    stack.block_local_store()
    await demo.expect_state("storage", "unavailable")
    await demo.show_health(STORAGE_SERVICES, circuits=False)
    queued_before = await stack.metric("uploads_total", outcome="queued")
    done_before = await stack.metric("upload_tasks_total")
    failed_before = await stack.metric("upload_task_attempts_total")
    total = demo.count(20, 10)
    items = [
        upload("uploads", f"Here is file {n} of {total}.", f"file-{n:02d}.bin", _upload_bytes(n))
        for n in range(1, total + 1)
    ]
    keys = [tenant_upload_key(TENANT, item.attachments[0].storage_key) for item in items]
    size = sum(item.attachments[0].size_bytes for item in items)
    ui.step(f"A user uploads {total} files ({size // 1024} KiB) while no store can take them")
    sent = await demo.send("storage", items)
    replies = await demo.replies_to(sent)
    demo.check(len(replies) == len(sent), f"{len(replies)}/{len(sent)} answered at once")
    demo.check(
        len(replies) == len(sent)
        and all(UPLOAD_QUEUED in r.notices and "storage" in r.degraded for r in replies.values()),
        f'every reply says notices ["{UPLOAD_QUEUED}"], degraded ["storage"]',
    )

    async def published() -> bool:
        tasks = demo.reader.upload_tasks()
        return all(tasks.get(key, 0) for key in keys)

    await demo.wait_for(published, timeout=30)
    tasks = demo.reader.upload_tasks()
    on_topic = sum(1 for key in keys if tasks.get(key, 0))
    queued = round(await stack.metric("uploads_total", outcome="queued") - queued_before)
    demo.check(
        on_topic == total and queued == total,
        f"{on_topic} tasks on upload.retry, each written to the outbox with its reply "
        f'(uploads_total{{outcome="queued"}} +{queued})',
    )
    await asyncio.sleep(demo.count(3, 2))
    done = round(await stack.metric("upload_tasks_total") - done_before)
    failed = round(await stack.metric("upload_task_attempts_total") - failed_before)
    demo.check(
        on_topic - done == total and failed > 0,
        f"upload.retry backlog {on_topic - done} (upload_tasks_total +{done}); "
        f"{failed} failed attempts so far, each retried with backoff (0.2 s doubling to 1 s)",
    )

    ui.step("The local disk is back: the upload agent parks each queued upload there")
    stack.unblock_local_store()

    async def parked() -> int:
        return len(stack.local_files(UPLOADS_PREFIX))

    held = await demo.fill("parked on the local disk", parked, total, timeout=60, unit="uploads")
    demo.check(held == total, f"{held} temporary copies on the local disk (readable meanwhile)")
    await demo.expect_state("storage", "degraded", timeout=15)

    ui.step("S3 is back: each upload moves to S3 once S3's circuit lets a trial through")
    await asyncio.to_thread(stack.s3.start)
    await demo.expect_state("storage.s3", "healthy")

    async def in_s3() -> int:
        return len(await stack.s3_objects(UPLOADS_PREFIX))

    timeout = 8 * stack.options.breaker_wait_seconds + 60
    await demo.fill("uploads in S3", in_s3, total, timeout=timeout, unit="objects")
    await demo.drain("temporary copies deleted", parked, timeout=60, unit="deleted", initial=held)
    stored = await stack.s3_objects(UPLOADS_PREFIX)
    count = count_uploads(
        {key: demo.uploads[key] for key in keys},
        stored,
        demo.reader.upload_tasks(),
        len(stack.local_files(UPLOADS_PREFIX)),
    )
    demo.check(
        count.stored == total and set(stored) == set(keys),
        f"S3 holds the {count.stored}/{total} uploads, every byte as sent "
        f"({sum(len(data) for data in stored.values())} bytes)",
    )
    demo.check(
        count.duplicated == 0 and count.queued == total,
        f"each upload's task was published once on upload.retry ({count.duplicated} twice)",
    )
    outcomes = {
        outcome: round(await stack.metric("upload_tasks_total", outcome=outcome))
        for outcome in ("stored", "promoted", "dead_lettered")
    }
    demo.check(
        outcomes["dead_lettered"] == 0
        and round(await stack.metric("upload_tasks_total") - done_before) == total,
        "upload_tasks_total: " + ", ".join(f"{k} {v}" for k, v in outcomes.items()),
    )
    demo.check(count.temporary_left == 0, "no temporary copy is left on the local disk")
    await demo.expect_state("storage", "healthy")
    await demo.show_health(STORAGE_SERVICES, circuits=False)
    await demo.expect_events("storage", ["unavailable", "healthy"], since)


async def kafka_unavailable(demo: Demo) -> None:
    """Seed scenario 5: the broker stops; messages and replies wait in the outbox, then drain."""
    ui = demo.ui
    stack = demo.stack
    since = len(demo.reader.events)
    await demo.expect_state("kafka", "healthy")
    ui.step("Stop the Kafka broker: scripts/services.sh stop kafka")
    taken, lines = await stack.stop_broker()
    for line in lines:
        ui.note(line)
    demo.check(True, f"broker stopped ({taken:.1f}s)")
    await demo.expect_state("kafka", "unavailable")
    ui.note("the worker's event about it waits in the outbox like everything else")
    sessions = ("orders", "billing", "returns")
    total = demo.count(24, 12)
    texts = [(sessions[n % 3], f"Where is my parcel? (question {n + 1})") for n in range(total)]
    ui.step(f"Users keep writing: {total} messages in {len(sessions)} sessions")
    sent = await demo.send(
        "kafka", texts, pace=demo.count(4, 2) / 10, label="sending", watch_outbox=True
    )
    via_outbox = sum(1 for s in sent if s.path is DeliveryPath.OUTBOX)
    backlog = await demo.backlog.outbox()
    demo.outbox_peak = max(demo.outbox_peak, backlog)
    demo.check(
        via_outbox == len(sent),
        f"all {len(sent)} messages accepted: {via_outbox} kept in the outbox (PostgreSQL)",
    )
    demo.check(backlog >= len(sent), f"the outbox backlog grew to {backlog} rows")
    answered = demo.reader.answered() & {s.message.message_id for s in sent}
    ui.note(f"replies so far: {len(answered)} (they need the broker too)")
    ui.step("Start the broker again: scripts/services.sh start kafka")
    taken, lines = await stack.start_broker()
    for line in lines:
        ui.note(line)
    demo.check(True, f"broker back ({taken:.1f}s)")
    emptied, peak = await demo.drain(
        "outbox draining", demo.backlog.outbox, timeout=180, unit="published", initial=backlog
    )
    demo.outbox_peak = max(demo.outbox_peak, peak)
    demo.check(emptied, f"the relay drained the outbox ({peak} rows at the peak)")
    replies = await demo.replies_to(sent, timeout=180)
    demo.check(len(replies) == len(sent), f"{len(replies)}/{len(sent)} answered after the outage")
    await demo.expect_state("kafka", "healthy", timeout=90)
    await demo.expect_events("kafka", ["unavailable", "healthy"], since, timeout=60)


WARM_UP: Final = Scenario(
    key="healthy",
    number=0,
    title="Warm-up: everything healthy",
    detection="-",
    response="-",
    impact="none",
    recovery="-",
    run=warm_up,
)

#: The seed's scenarios in its order.
SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario(
        key="somabrain",
        number=1,
        title="SomaBrain unavailable",
        detection="HTTP timeout (health probe, failed recall)",
        response="memories kept in pending_memory",
        impact="session-only context (degraded richness)",
        recovery="memories synced automatically, in order, each once",
        run=somabrain_unavailable,
    ),
    Scenario(
        key="llm",
        number=2,
        title="LLM provider unavailable",
        detection="consecutive failures open the model's circuit",
        response="the next model of the chain answers",
        impact="none (transparent)",
        recovery="the primary's half-open trial closes its circuit",
        run=llm_unavailable,
    ),
    Scenario(
        key="audio",
        number=3,
        title="Audio service unavailable",
        detection="TTS/STT failures",
        response="browser native fallback",
        impact='"Voice in fallback mode" message',
        recovery="primary monitored",
        run=audio_unavailable,
    ),
    Scenario(
        key="storage",
        number=4,
        title="Storage unavailable",
        detection="S3/filesystem failure",
        response="uploads queued via the outbox",
        impact='"Upload queued" message',
        recovery="automatic retry",
        run=storage_unavailable,
    ),
    Scenario(
        key="kafka",
        number=5,
        title="Kafka unavailable",
        detection="producer connect failure, metadata probe",
        response="messages and replies kept in the PostgreSQL outbox",
        impact="none (queued)",
        recovery="the relay drains the outbox",
        run=kafka_unavailable,
    ),
)


def find_scenarios(names: Sequence[str]) -> list[Scenario]:
    """The scenarios named (key or seed number), in the seed's order; all when none."""
    if not names:
        return list(SCENARIOS)
    wanted = {name.strip().lower() for name in names}
    known = {s.key for s in SCENARIOS} | {str(s.number) for s in SCENARIOS}
    unknown = sorted(wanted - known - {WARM_UP.key})
    if unknown:
        choices = ", ".join(f"{s.key} ({s.number})" for s in SCENARIOS)
        raise ValueError(f"unknown scenario {', '.join(unknown)}; choose from {choices}")
    return [s for s in SCENARIOS if s.key in wanted or str(s.number) in wanted]


async def run_scenario(demo: Demo, scenario: Scenario) -> ScenarioResult:
    """Run one scenario (or say why it is skipped) and return how it went."""
    ui = demo.ui
    result = ScenarioResult(scenario)
    demo.result = result
    number = f"Scenario {scenario.number}: " if scenario.number else ""
    ui.heading(f"{number}{scenario.title}")
    if scenario.number:
        ui.note(f"seed  detection    {scenario.detection}")
        ui.note(f"      response     {scenario.response}")
        ui.note(f"      user impact  {scenario.impact}")
        ui.note(f"      recovery     {scenario.recovery}")
    started = time.monotonic()
    problem = scenario.unavailable
    if scenario.run is not None and scenario.key == "kafka":
        problem = demo.stack.broker_control_problem() or ""
    if scenario.run is None or problem:
        result.status = "skipped"
        result.note = problem
        ui.skip(f"skipped: {problem}")
        return result
    try:
        await scenario.run(demo)
    except (ScenarioFailed, StackError) as exc:
        result.status = "failed"
        result.note = str(exc).splitlines()[0]
        ui.bad(f"scenario stopped: {exc}")
    finally:
        if demo.stack.broker_stopped:  # never leave the broker down for the next scenario
            ui.step("Start the broker again: scripts/services.sh start kafka")
            await demo.stack.start_broker()
        healed = await demo.stack.heal_providers()  # nor a provider this scenario failed
        if healed:
            ui.note(f"restored for the next scenario: {', '.join(healed)}")
    result.seconds = time.monotonic() - started
    return result
