"""An asyncio circuit breaker with the semantics of resilience4j's, and a few more.

States and transitions::

    closed ──(failure rate, slow-call rate or consecutive failures)──▶ open
    open ──(wait elapsed; backoff, cap and jitter)──▶ half_open
    half_open ──(all N trials done, rates below thresholds)──▶ closed
    half_open ──(rates at/above thresholds, a failure with a consecutive threshold set,
                 or trials not done within max_wait_in_half_open)──▶ open (longer wait)
    closed/half_open ──trip(reason)──▶ open (an outside verdict, e.g. a broker-down event)
    any ──force_open()──▶ forced_open     any ──disable()──▶ disabled
    any ──reset()──▶ closed (empty window, backoff reset)

Outcomes. A call that returns is a success (``slow_success`` when it took at least
``slow_call_duration``). A call that raises is *ignored* when the exception matches
``ignore_exceptions`` (checked first), a *failure* when it matches
``record_exceptions``, and otherwise a success — the resilience4j rule: an
exception the configuration does not name as a failure says the dependency answered.
``asyncio.CancelledError`` (and any other ``BaseException`` that is not an
``Exception`` and not listed in ``record_exceptions``) is neutral: no outcome, the
half-open slot is freed.

Windows. The count window is a ring buffer of the last ``window_size`` outcomes with
running totals (O(1) per call). The time window is an exact deque of
``(timestamp, outcome)`` trimmed on every record and read, with running totals: O(1)
amortised per call (each entry is appended and removed once), exact to the clock's
resolution, memory proportional to the calls in the last ``window_size`` seconds. A
call is forgotten once it is ``window_size`` seconds old or older.

Every state has an *epoch*. A call carries the epoch in which it was permitted; an
outcome from an earlier epoch (the breaker opened, was reset, ... while it ran) is
counted in the metrics but does not move the state machine.

Transitions are evaluated lazily: ``open → half_open`` (and the half-open deadline)
happen when the state is next read or a call asks for permission, at that clock
reading. The breaker is not thread-safe: use it from one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random as _random_module
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from sa01.core.errors import CircuitOpenError

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter

    from sa01.core.metrics import Metrics

__all__ = [
    "STATE_GAUGE_VALUES",
    "BreakerConfig",
    "BreakerListener",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CallOutcome",
    "CircuitBreaker",
    "Permit",
]

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class BreakerState(StrEnum):
    """The state of a breaker; the value is the name used in metrics and events."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


STATE_GAUGE_VALUES: dict[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.OPEN: 1,
    BreakerState.HALF_OPEN: 2,
    BreakerState.FORCED_OPEN: 3,
    BreakerState.DISABLED: 4,
}
"""The ``circuit_breaker_state`` gauge value of each state."""


class CallOutcome(StrEnum):
    """How one call through a breaker ended (the ``outcome`` metric label)."""

    SUCCESS = "success"
    FAILURE = "failure"
    SLOW_SUCCESS = "slow_success"
    SLOW_FAILURE = "slow_failure"
    IGNORED = "ignored"
    REJECTED = "rejected"


# Module-level aliases: attribute access on an enum class costs ~100 ns in 3.11, and
# the closed-state path is hot.
_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN
_FORCED_OPEN = BreakerState.FORCED_OPEN
_DISABLED = BreakerState.DISABLED
_SUCCESS = CallOutcome.SUCCESS
_FAILURE = CallOutcome.FAILURE
_SLOW_SUCCESS = CallOutcome.SLOW_SUCCESS
_SLOW_FAILURE = CallOutcome.SLOW_FAILURE
_IGNORED = CallOutcome.IGNORED
_REJECTED = CallOutcome.REJECTED
_FAILED = frozenset({_FAILURE, _SLOW_FAILURE})
_SLOW = frozenset({_SLOW_SUCCESS, _SLOW_FAILURE})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_exception_types(field_name: str, types: object) -> None:
    if not isinstance(types, tuple):
        raise ValueError(f"BreakerConfig.{field_name} must be a tuple of exception types")
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"BreakerConfig.{field_name} must hold exception types, got {item!r}")


@dataclass(frozen=True)
class BreakerConfig:
    """How a breaker measures calls and when it opens and closes.

    Durations are seconds of the breaker's clock; rates are percentages. Invalid
    values raise ``ValueError`` naming the field.
    """

    window_type: Literal["count", "time"] = "count"
    """``count``: the last ``window_size`` calls; ``time``: the last ``window_size`` s."""
    window_size: float = 20
    minimum_calls: int = 10
    """Calls the window must hold before the rates can open the circuit."""
    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration: float = 30.0
    """A call that takes at least this long is slow."""
    consecutive_failures_threshold: int | None = 5
    """Open after this many failures in a row, even below ``minimum_calls``."""
    permitted_calls_in_half_open: int = 2
    wait_in_open: float = 30.0
    wait_backoff_multiplier: float = 2.0
    """Each re-open from half-open without an intervening close multiplies the wait."""
    max_wait_in_open: float = 300.0
    wait_jitter: float = 0.1
    """The wait is multiplied by a uniform factor in [1 - jitter, 1 + jitter), then capped."""
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    max_wait_in_half_open: float | None = None
    """Back to open when the trials have not all finished this long after half-open."""

    def __post_init__(self) -> None:
        if self.window_type not in ("count", "time"):
            raise ValueError(
                f"BreakerConfig.window_type must be 'count' or 'time', got {self.window_type!r}"
            )
        if self.window_type == "count":
            if not _is_int(self.window_size) or self.window_size < 1:
                raise ValueError(
                    "BreakerConfig.window_size must be an int >= 1 (calls) for a count "
                    f"window, got {self.window_size!r}"
                )
        elif not _is_number(self.window_size) or not 0 < self.window_size < math.inf:
            raise ValueError(
                "BreakerConfig.window_size must be a finite number of seconds > 0 for a "
                f"time window, got {self.window_size!r}"
            )
        if not _is_int(self.minimum_calls) or self.minimum_calls < 1:
            raise ValueError(
                f"BreakerConfig.minimum_calls must be an int >= 1, got {self.minimum_calls!r}"
            )
        if self.window_type == "count" and self.minimum_calls > self.window_size:
            raise ValueError(
                f"BreakerConfig.minimum_calls ({self.minimum_calls}) exceeds the count "
                f"window_size ({self.window_size}): the rates could never open the circuit"
            )
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value <= 100:
                raise ValueError(
                    f"BreakerConfig.{name} must be a percentage in (0, 100], got {value!r}"
                )
        if not _is_number(self.slow_call_duration) or not self.slow_call_duration > 0:
            raise ValueError(
                f"BreakerConfig.slow_call_duration must be > 0 s, got {self.slow_call_duration!r}"
            )
        threshold = self.consecutive_failures_threshold
        if threshold is not None and (not _is_int(threshold) or threshold < 1):
            raise ValueError(
                "BreakerConfig.consecutive_failures_threshold must be None or an int >= 1, "
                f"got {threshold!r}"
            )
        if not _is_int(self.permitted_calls_in_half_open) or self.permitted_calls_in_half_open < 1:
            raise ValueError(
                "BreakerConfig.permitted_calls_in_half_open must be an int >= 1, "
                f"got {self.permitted_calls_in_half_open!r}"
            )
        if not _is_number(self.wait_in_open) or not 0 < self.wait_in_open < math.inf:
            raise ValueError(
                "BreakerConfig.wait_in_open must be a finite number > 0 s, "
                f"got {self.wait_in_open!r}"
            )
        multiplier = self.wait_backoff_multiplier
        if not _is_number(multiplier) or not 1 <= multiplier < math.inf:
            raise ValueError(
                f"BreakerConfig.wait_backoff_multiplier must be >= 1, got {multiplier!r}"
            )
        if not _is_number(self.max_wait_in_open) or not (
            self.wait_in_open <= self.max_wait_in_open < math.inf
        ):
            raise ValueError(
                "BreakerConfig.max_wait_in_open must be finite and >= wait_in_open "
                f"({self.wait_in_open}), got {self.max_wait_in_open!r}"
            )
        if not _is_number(self.wait_jitter) or not 0 <= self.wait_jitter <= 1:
            raise ValueError(
                f"BreakerConfig.wait_jitter must be a fraction in [0, 1], got {self.wait_jitter!r}"
            )
        _check_exception_types("record_exceptions", self.record_exceptions)
        if not self.record_exceptions:
            raise ValueError(
                "BreakerConfig.record_exceptions must name at least one exception type"
            )
        _check_exception_types("ignore_exceptions", self.ignore_exceptions)
        half_open_wait = self.max_wait_in_half_open
        if half_open_wait is not None and (not _is_number(half_open_wait) or half_open_wait <= 0):
            raise ValueError(
                f"BreakerConfig.max_wait_in_half_open must be None or > 0 s, got {half_open_wait!r}"
            )


@dataclass(frozen=True)
class BreakerTransition:
    """One state change, as given to listeners."""

    name: str
    from_state: BreakerState
    to_state: BreakerState
    at: float
    """The breaker's clock when the transition was made (or observed, if lazy)."""
    reason: str


BreakerListener = Callable[[BreakerTransition], None]


@dataclass(frozen=True)
class BreakerSnapshot:
    """What a breaker knows at one moment; rates are percentages of the window's calls."""

    name: str
    state: BreakerState
    failure_rate: float
    slow_call_rate: float
    calls_in_window: int
    failed_calls: int
    slow_calls: int
    consecutive_failures: int
    half_open_in_flight: int
    half_open_completed: int
    consecutive_opens: int
    """Opens since the last close: the backoff exponent is this minus one."""
    opened_at: float | None
    next_attempt_at: float | None
    """When an open breaker lets the first trial through (``None`` unless open)."""


class _CountWindow:
    """The last ``size`` outcomes in a ring buffer with running totals."""

    __slots__ = ("_next", "_ring", "_size", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._ring = [0] * size
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def add(self, failed: bool, slow: bool, now: float) -> None:
        code = (1 if failed else 0) | (2 if slow else 0)
        index = self._next
        if self.calls == self._size:
            old = self._ring[index]
            self.failures -= old & 1
            self.slow -= old >> 1
        else:
            self.calls += 1
        self._ring[index] = code
        self._next = index + 1 if index + 1 < self._size else 0
        self.failures += code & 1
        self.slow += code >> 1

    def trim(self, now: float) -> None:
        """Nothing ages out of a count window."""

    def clear(self) -> None:
        self._next = self.calls = self.failures = self.slow = 0


class _TimeWindow:
    """Outcomes of the last ``span`` seconds in a deque with running totals."""

    __slots__ = ("_entries", "_span", "calls", "failures", "slow")

    def __init__(self, span: float) -> None:
        self._span = span
        self._entries: deque[tuple[float, int]] = deque()
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def add(self, failed: bool, slow: bool, now: float) -> None:
        self.trim(now)
        code = (1 if failed else 0) | (2 if slow else 0)
        self._entries.append((now, code))
        self.calls += 1
        self.failures += code & 1
        self.slow += code >> 1

    def trim(self, now: float) -> None:
        horizon = now - self._span
        entries = self._entries
        while entries and entries[0][0] <= horizon:
            _, code = entries.popleft()
            self.calls -= 1
            self.failures -= code & 1
            self.slow -= code >> 1

    def clear(self) -> None:
        self._entries.clear()
        self.calls = self.failures = self.slow = 0


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


class Permit:
    """Permission for one call, bound to the breaker state that granted it.

    Settle it exactly once with :meth:`success`, :meth:`error`, :meth:`failure` or
    :meth:`release`; later settlements are ignored. ``duration`` defaults to the
    breaker's clock now minus :attr:`started_at`.
    """

    __slots__ = ("_breaker", "_epoch", "_settled", "started_at")

    def __init__(self, breaker: CircuitBreaker, epoch: int, started_at: float) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._settled = False
        self.started_at = started_at

    @property
    def settled(self) -> bool:
        """Whether an outcome (or a release) was already given."""
        return self._settled

    def success(self, duration: float | None = None) -> None:
        """The call returned: a success, or a slow success."""
        if self._settled:
            return
        self._settled = True
        breaker = self._breaker
        now = breaker._clock()
        elapsed = now - self.started_at if duration is None else duration
        breaker._settle(breaker._success_outcome(elapsed), self._epoch, now)

    def error(self, exc: BaseException, duration: float | None = None) -> None:
        """The call raised ``exc``: classified by the config (failure, success, ignored, none)."""
        if self._settled:
            return
        self._settled = True
        breaker = self._breaker
        now = breaker._clock()
        elapsed = now - self.started_at if duration is None else duration
        breaker._settle(breaker._classify(exc, elapsed), self._epoch, now)

    def failure(self, duration: float | None = None) -> None:
        """Record a failure whatever the exception filters say (e.g. a caller's timeout)."""
        if self._settled:
            return
        self._settled = True
        breaker = self._breaker
        now = breaker._clock()
        elapsed = now - self.started_at if duration is None else duration
        slow = elapsed >= breaker._config.slow_call_duration
        breaker._settle(_SLOW_FAILURE if slow else _FAILURE, self._epoch, now)

    def release(self) -> None:
        """The call was abandoned (cancelled): no outcome; a half-open slot is freed."""
        if self._settled:
            return
        self._settled = True
        breaker = self._breaker
        breaker._settle(None, self._epoch, 0.0)


class _CallContext:
    """``async with breaker.call()``: refuse before the body, record after it."""

    __slots__ = ("_breaker", "_permit")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._permit: Permit | None = None

    async def __aenter__(self) -> Permit:
        permit = self._breaker.acquire_permit()
        if permit is None:
            raise CircuitOpenError(self._breaker.name)
        self._permit = permit
        return permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit = self._permit
        if permit is None or permit._settled:  # settled by the body (e.g. ``failure()``)
            return
        permit._settled = True
        breaker = self._breaker
        now = breaker._clock()
        elapsed = now - permit.started_at
        if exc is None:
            outcome: CallOutcome | None = breaker._success_outcome(elapsed)
        else:
            outcome = breaker._classify(exc, elapsed)
        breaker._settle(outcome, permit._epoch, now)


class CircuitBreaker:
    """A circuit breaker named ``name``; see the module docstring for the semantics.

    ``clock`` (seconds, monotonic) and ``random`` (uniform in [0, 1)) are injectable
    for tests. ``metrics`` receives the state gauge, outcome counts and transitions.
    Each listener is called synchronously with every :class:`BreakerTransition`; a
    listener that raises is logged and otherwise ignored. The constructor does no I/O.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random_module.random,
        metrics: Metrics | None = None,
        listeners: Iterable[BreakerListener] = (),
    ) -> None:
        if not name:
            raise ValueError("a circuit breaker needs a non-empty name")
        self._name = name
        self._config = config if config is not None else BreakerConfig()
        cfg = self._config
        self._clock = clock
        self._random = random
        self._metrics = metrics
        self._listeners: list[BreakerListener] = list(listeners)
        self._state = _CLOSED
        self._epoch = 0
        self._window: _CountWindow | _TimeWindow = (
            _CountWindow(int(cfg.window_size))
            if cfg.window_type == "count"
            else _TimeWindow(float(cfg.window_size))
        )
        self._consecutive_failures = 0
        self._trials_in_flight = 0
        self._trials_done = 0
        self._trial_failures = 0
        self._trial_slow = 0
        self._half_open_since = 0.0
        self._opened_at: float | None = None
        self._next_attempt_at: float | None = None
        self._wait_base: float | None = None
        self._consecutive_opens = 0
        self._outcome_counters: dict[CallOutcome, Counter] | None = None
        if metrics is not None:
            self._outcome_counters = {
                outcome: metrics.circuit_breaker_calls_total.labels(
                    name=name, outcome=outcome.value
                )
                for outcome in CallOutcome
            }
            metrics.circuit_breaker_state.labels(name=name).set(STATE_GAUGE_VALUES[_CLOSED])

    # --- introspection ----------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name (the ``name`` metric label)."""
        return self._name

    @property
    def config(self) -> BreakerConfig:
        """The configuration given at construction."""
        return self._config

    @property
    def clock(self) -> Callable[[], float]:
        """The clock durations and waits are measured with."""
        return self._clock

    @property
    def state(self) -> BreakerState:
        """The current state; a due ``open → half_open`` (or half-open deadline) happens now."""
        if self._state is _OPEN or self._state is _HALF_OPEN:
            self._tick(self._clock())
        return self._state

    @property
    def is_call_permitted(self) -> bool:
        """Whether a call asking now would be permitted; no transition, no count."""
        state = self._state
        if state is _CLOSED or state is _DISABLED:
            return True
        if state is _FORCED_OPEN:
            return False
        now = self._clock()
        if state is _OPEN:
            return self._next_attempt_at is not None and now >= self._next_attempt_at
        limit = self._config.max_wait_in_half_open
        if limit is not None and now - self._half_open_since >= limit:
            return False
        return (
            self._trials_in_flight + self._trials_done < self._config.permitted_calls_in_half_open
        )

    def snapshot(self) -> BreakerSnapshot:
        """The state (after any due lazy transition) and the window's measurements."""
        state = self.state
        window = self._window
        window.trim(self._clock())
        return BreakerSnapshot(
            name=self._name,
            state=state,
            failure_rate=_percent(window.failures, window.calls),
            slow_call_rate=_percent(window.slow, window.calls),
            calls_in_window=window.calls,
            failed_calls=window.failures,
            slow_calls=window.slow,
            consecutive_failures=self._consecutive_failures,
            half_open_in_flight=self._trials_in_flight,
            half_open_completed=self._trials_done,
            consecutive_opens=self._consecutive_opens,
            opened_at=self._opened_at,
            next_attempt_at=self._next_attempt_at,
        )

    def add_listener(self, listener: BreakerListener) -> None:
        """Call ``listener`` with every later transition."""
        self._listeners.append(listener)

    # --- calls --------------------------------------------------------------------

    def call(self) -> _CallContext:
        """``async with breaker.call():`` guards the body.

        Raises :class:`CircuitOpenError` before the body runs when the call is not
        permitted (counted ``rejected``). On exit records the outcome with the
        duration measured on the breaker's clock; exceptions propagate untouched.
        The context value is the :class:`Permit` (e.g. to call ``failure()``).
        """
        return _CallContext(self)

    async def run(
        self, fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``await fn(*args, **kwargs)`` through the breaker (see :meth:`call`)."""
        epoch = self._acquire()
        if epoch is None:
            raise CircuitOpenError(self._name)
        clock = self._clock
        started = clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            now = clock()
            self._settle(self._classify(exc, now - started), epoch, now)
            raise
        now = clock()
        if now - started >= self._config.slow_call_duration:
            self._settle(_SLOW_SUCCESS, epoch, now)
        else:
            self._settle(_SUCCESS, epoch, now)
        return result

    def acquire_permit(self) -> Permit | None:
        """A :class:`Permit` for one call, or ``None`` (counted ``rejected``) if refused."""
        epoch = self._acquire()
        if epoch is None:
            return None
        return Permit(self, epoch, self._clock())

    def try_acquire(self) -> bool:
        """Ask permission for one call; ``False`` is counted ``rejected``.

        After ``True`` report exactly one of :meth:`on_success`, :meth:`on_error` or
        :meth:`release`. These low-level calls are attributed to the current state;
        prefer :meth:`acquire_permit`, whose outcome is ignored if the state changed.
        """
        return self._acquire() is not None

    def on_success(self, duration: float) -> None:
        """A permitted call returned after ``duration`` seconds."""
        self._settle(self._success_outcome(duration), self._epoch, self._clock())

    def on_error(self, exc: BaseException, duration: float) -> None:
        """A permitted call raised ``exc`` after ``duration`` seconds (classified by config)."""
        self._settle(self._classify(exc, duration), self._epoch, self._clock())

    def release(self) -> None:
        """A permitted call was abandoned (cancelled): no outcome, a half-open slot is freed."""
        self._settle(None, self._epoch, 0.0)

    # --- manual control -------------------------------------------------------------

    def trip(self, reason: str) -> bool:
        """Open now, as if the failure threshold had been reached (an outside verdict).

        From closed or half-open the breaker opens with its usual wait (and backoff
        from half-open); an open breaker whose wait is not over, a forced-open or a
        disabled one is left as it is. True when this call opened the breaker.
        """
        now = self._clock()
        self._tick(now)
        if self._state is _CLOSED or self._state is _HALF_OPEN:
            self._transition(_OPEN, now, reason)
            return True
        return False

    def try_now(self, reason: str) -> bool:
        """An outside verdict that the service is back: an open breaker goes half-open now,
        so its next call is the trial that closes or reopens it (with the usual backoff).

        Any other state is left as it is; a forced-open breaker stays forced. True when
        this call moved the breaker.
        """
        now = self._clock()
        self._tick(now)
        if self._state is _OPEN:
            self._transition(_HALF_OPEN, now, reason)
            return True
        return False

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (or :meth:`disable`)."""
        if self._state is not _FORCED_OPEN:
            self._transition(_FORCED_OPEN, self._clock(), "forced open")

    def disable(self) -> None:
        """Permit every call and record nothing until :meth:`reset` (or :meth:`force_open`)."""
        if self._state is not _DISABLED:
            self._transition(_DISABLED, self._clock(), "disabled")

    def reset(self) -> None:
        """Back to closed with an empty window and no backoff; calls in flight are forgotten."""
        if self._state is _CLOSED:
            self._epoch += 1
            self._enter_closed()
        else:
            self._transition(_CLOSED, self._clock(), "reset")

    # --- internals ----------------------------------------------------------------------

    def _acquire(self) -> int | None:
        state = self._state
        if state is _CLOSED or state is _DISABLED:
            return self._epoch
        if state is not _FORCED_OPEN:
            self._tick(self._clock())
            if (
                self._state is _HALF_OPEN
                and self._trials_in_flight + self._trials_done
                < self._config.permitted_calls_in_half_open
            ):
                self._trials_in_flight += 1
                return self._epoch
        self._count(_REJECTED)
        return None

    def _success_outcome(self, duration: float) -> CallOutcome:
        if duration >= self._config.slow_call_duration:
            return _SLOW_SUCCESS
        return _SUCCESS

    def _classify(self, exc: BaseException, duration: float) -> CallOutcome | None:
        if isinstance(exc, asyncio.CancelledError):
            return None
        cfg = self._config
        if cfg.ignore_exceptions and isinstance(exc, cfg.ignore_exceptions):
            return _IGNORED
        if isinstance(exc, cfg.record_exceptions):
            slow = duration >= cfg.slow_call_duration
            return _SLOW_FAILURE if slow else _FAILURE
        if not isinstance(exc, Exception):
            return None  # KeyboardInterrupt, SystemExit, ...: says nothing about the callee
        return self._success_outcome(duration)

    def _count(self, outcome: CallOutcome) -> None:
        counters = self._outcome_counters
        if counters is not None:
            counters[outcome].inc()

    def _settle(self, outcome: CallOutcome | None, epoch: int, now: float) -> None:
        state = self._state
        if state is _DISABLED:
            return
        if outcome is None:
            if epoch == self._epoch and state is _HALF_OPEN and self._trials_in_flight > 0:
                self._trials_in_flight -= 1
            return
        self._count(outcome)
        if epoch != self._epoch:
            return
        if state is _CLOSED:
            self._record_closed(outcome, now)
        elif state is _HALF_OPEN:
            self._tick(now)
            if self._state is _HALF_OPEN:
                self._record_half_open(outcome, now)

    def _record_closed(self, outcome: CallOutcome, now: float) -> None:
        if outcome is _IGNORED:
            return
        cfg = self._config
        failed = outcome is _FAILURE or outcome is _SLOW_FAILURE
        window = self._window
        window.add(failed, outcome is _SLOW_SUCCESS or outcome is _SLOW_FAILURE, now)
        if failed:
            self._consecutive_failures += 1
            threshold = cfg.consecutive_failures_threshold
            if threshold is not None and self._consecutive_failures >= threshold:
                self._transition(_OPEN, now, f"{self._consecutive_failures} consecutive failures")
                return
        else:
            self._consecutive_failures = 0
        calls = window.calls
        if calls < cfg.minimum_calls:
            return
        if window.failures * 100 >= cfg.failure_rate_threshold * calls:
            self._transition(
                _OPEN,
                now,
                f"failure rate {_percent(window.failures, calls):.1f}% >= "
                f"{cfg.failure_rate_threshold:g}% over {calls} calls",
            )
        elif window.slow * 100 >= cfg.slow_call_rate_threshold * calls:
            self._transition(
                _OPEN,
                now,
                f"slow-call rate {_percent(window.slow, calls):.1f}% >= "
                f"{cfg.slow_call_rate_threshold:g}% over {calls} calls",
            )

    def _record_half_open(self, outcome: CallOutcome, now: float) -> None:
        if self._trials_in_flight <= 0:
            return  # a low-level outcome with no trial to attribute it to
        self._trials_in_flight -= 1
        if outcome is _IGNORED:
            return  # the slot is free for another trial
        cfg = self._config
        failed = outcome in _FAILED
        self._trials_done += 1
        self._trial_failures += failed
        self._trial_slow += outcome in _SLOW
        if failed and cfg.consecutive_failures_threshold is not None:
            self._transition(_OPEN, now, "a trial call failed in half-open")
            return
        done = self._trials_done
        if done < cfg.permitted_calls_in_half_open:
            return
        if self._trial_failures * 100 >= cfg.failure_rate_threshold * done:
            self._transition(
                _OPEN,
                now,
                f"{self._trial_failures} of {done} trial calls failed "
                f"(>= {cfg.failure_rate_threshold:g}%)",
            )
        elif self._trial_slow * 100 >= cfg.slow_call_rate_threshold * done:
            self._transition(
                _OPEN,
                now,
                f"{self._trial_slow} of {done} trial calls were slow "
                f"(>= {cfg.slow_call_rate_threshold:g}%)",
            )
        else:
            self._transition(_CLOSED, now, f"{done} trial calls below the thresholds")

    def _tick(self, now: float) -> None:
        if (
            self._state is _OPEN
            and self._next_attempt_at is not None
            and now >= self._next_attempt_at
        ):
            self._transition(_HALF_OPEN, now, "wait in open elapsed")
        limit = self._config.max_wait_in_half_open
        if limit is not None and self._state is _HALF_OPEN and now - self._half_open_since >= limit:
            self._transition(
                _OPEN,
                now,
                f"trial calls did not complete within {limit:g} s of half-open",
            )

    def _enter_closed(self) -> None:
        self._window.clear()
        self._consecutive_failures = 0
        self._consecutive_opens = 0
        self._wait_base = None
        self._opened_at = None
        self._next_attempt_at = None

    def _open_wait(self, reopening: bool) -> float:
        cfg = self._config
        if reopening and self._wait_base is not None:
            base = min(self._wait_base * cfg.wait_backoff_multiplier, cfg.max_wait_in_open)
        else:
            base = min(cfg.wait_in_open, cfg.max_wait_in_open)
        self._wait_base = base
        wait = base
        if cfg.wait_jitter:
            wait = base * (1.0 + cfg.wait_jitter * (2.0 * self._random() - 1.0))
        return min(max(wait, 0.0), cfg.max_wait_in_open)

    def _transition(self, to: BreakerState, now: float, reason: str) -> None:
        from_state = self._state
        self._state = to
        self._epoch += 1
        self._trials_in_flight = self._trials_done = 0
        self._trial_failures = self._trial_slow = 0
        if to is _CLOSED:
            self._enter_closed()
        elif to is _OPEN:
            wait = self._open_wait(reopening=from_state is _HALF_OPEN)
            self._consecutive_opens += 1
            self._opened_at = now
            self._next_attempt_at = now + wait
        elif to is _HALF_OPEN:
            self._half_open_since = now
            self._next_attempt_at = None
        elif to is _FORCED_OPEN:
            self._opened_at = now
            self._next_attempt_at = None
        else:
            self._opened_at = self._next_attempt_at = None
        metrics = self._metrics
        if metrics is not None:
            metrics.circuit_breaker_state.labels(name=self._name).set(STATE_GAUGE_VALUES[to])
            metrics.circuit_breaker_transitions_total.labels(
                name=self._name, from_state=from_state.value, to_state=to.value
            ).inc()
        level = logging.WARNING if to is _OPEN else logging.INFO
        logger.log(level, "circuit %r: %s -> %s (%s)", self._name, from_state, to, reason)
        event = BreakerTransition(self._name, from_state, to, now, reason)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("listener %r of circuit %r raised", listener, self._name)
