"""What each agent still has to do: lag per partition, records in flight, and drain rate.

:class:`BacklogMonitor` samples, every ``backlog_sample_seconds``, each partition
this worker owns: ``consumer_lag`` = the partition's high watermark minus the
group's committed offset (the last transaction marker of a partition counts 1; a
partition never committed counts from 0). It sets ``consumer_records_in_flight``
per agent, and keeps the totals of the last ``BACKLOG_WINDOW_SECONDS`` so that
``/status`` can say, per agent, the rows left and the rate at which they shrink
(``backlog`` in the document). ``memory_pending_rows`` is set by the memory sync.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sa01.core.metrics import Metrics

__all__ = ["BACKLOG_WINDOW_SECONDS", "BacklogMonitor", "ConsumerBacklog"]

BACKLOG_WINDOW_SECONDS = 30.0


@dataclass(frozen=True)
class ConsumerBacklog:
    """One agent's backlog on this worker."""

    rows_left: int
    rate_per_second: float
    in_flight: int

    @property
    def draining(self) -> bool:
        """Rows are left and they shrink."""
        return self.rows_left > 0 and self.rate_per_second > 0

    def as_json(self) -> dict[str, Any]:
        """The ``/status`` entry."""
        eta = self.rows_left / self.rate_per_second if self.draining else None
        return {
            "rows_left": self.rows_left,
            "rate_per_second": round(self.rate_per_second, 1),
            "in_flight": self.in_flight,
            "draining": self.draining,
            "eta_seconds": None if eta is None else round(eta, 1),
        }


class BacklogMonitor:
    """Samples the lag of every agent's partitions (see the module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        topics: Mapping[str, str],
        in_flight: Callable[[str], int],
    ) -> None:
        """``topics`` maps each input topic to its agent's name."""
        self.metrics = metrics
        self.topics = dict(topics)
        self.in_flight = in_flight
        self._history: dict[str, deque[tuple[float, int]]] = {}
        self._lags: dict[tuple[str, int], int] = {}

    def sample(self, consumer: Any, now: float | None = None) -> None:
        """Read ``consumer``'s (Faust's) assignment, high watermarks and commits."""
        now = time.monotonic() if now is None else now
        totals = dict.fromkeys(self.topics.values(), 0)
        lags: dict[tuple[str, int], int] = {}
        committed_offsets = getattr(consumer, "_committed_offset", {})
        for tp in consumer.assignment():
            name = self.topics.get(tp.topic)
            if name is None:
                continue
            high = consumer.highwater(tp)
            if high is None:
                continue
            lag = max(0, int(high) - int(committed_offsets.get(tp) or 0))
            lags[(tp.topic, tp.partition)] = lag
            totals[name] += lag
            self.metrics.consumer_lag.labels(
                consumer=name, topic=tp.topic, partition=str(tp.partition)
            ).set(lag)
        for topic, partition in set(self._lags) - set(lags):  # revoked partitions
            self.metrics.consumer_lag.remove(self.topics[topic], topic, str(partition))
        self._lags = lags
        for name, total in totals.items():
            self.record(name, total, now)
            self.metrics.consumer_records_in_flight.labels(consumer=name).set(self.in_flight(name))

    def record(self, name: str, rows_left: int, now: float) -> None:
        """Add one sample of ``name``'s rows left."""
        history = self._history.setdefault(name, deque())
        history.append((now, rows_left))
        while len(history) > 2 and now - history[0][0] > BACKLOG_WINDOW_SECONDS:
            history.popleft()

    def backlog(self, name: str) -> ConsumerBacklog:
        """Rows left (last sample) and their drain rate over the window."""
        history = self._history.get(name)
        if not history:
            return ConsumerBacklog(0, 0.0, self.in_flight(name))
        (first_time, first_rows), (last_time, last_rows) = history[0], history[-1]
        elapsed = last_time - first_time
        rate = (first_rows - last_rows) / elapsed if elapsed > 0 else 0.0
        return ConsumerBacklog(last_rows, max(rate, 0.0), self.in_flight(name))

    def as_json(self) -> dict[str, Any]:
        """Every agent's backlog for ``/status``."""
        return {name: self.backlog(name).as_json() for name in sorted(set(self.topics.values()))}
