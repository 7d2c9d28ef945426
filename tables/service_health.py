"""``service_health``: a changelog-backed GlobalTable, the fold of ``degradation.events``.

Keyed by service name; the value is the JSON of the service's latest health. Every
worker holds the whole table and a restarted worker recovers it from the changelog.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from sa01.resilience.health import ServiceHealth, latest
from schemas.messages import CircuitState, DegradationEvent, ServiceState

if TYPE_CHECKING:
    from faust.types import AppT
    from faust.types.tables import TableT

__all__ = ["TABLE_NAME", "declare", "fold", "health_from_row"]

TABLE_NAME = "service_health"


def declare(app: AppT, partitions: int) -> TableT[str, dict[str, object]]:
    """Declare the table on a Faust app."""
    return app.GlobalTable(
        TABLE_NAME,
        default=None,
        partitions=partitions,
        key_type=str,
        help="Health of every monitored service (fold of degradation.events).",
    )


def fold(current: Mapping[str, object] | None, event: DegradationEvent) -> dict[str, object] | None:
    """The new row for ``event``'s service, or None when the event changes nothing (it
    is older than the row, or the row's own). An event in the row's state keeps the
    row's ``since`` (:func:`~sa01.resilience.health.latest`)."""
    announced = ServiceHealth.from_event(event)
    if current is None:
        health = announced
    else:
        if current.get("event_id") == event.event_id:
            return None
        known = health_from_row(current)
        health = latest(known, announced)
        if health is known:
            return None
    row = health.as_json()
    row["event_id"] = event.event_id
    return row


def health_from_row(row: Mapping[str, object]) -> ServiceHealth:
    """The ServiceHealth stored in a table row."""
    latency = row.get("latency_ms")
    return ServiceHealth(
        service=str(row["service"]),
        state=ServiceState(str(row["state"])),
        circuit=CircuitState(str(row.get("circuit", "closed"))),
        since=datetime.fromisoformat(str(row["since"])),
        reason=str(row.get("reason", "")),
        latency_ms=latency if isinstance(latency, int | float) else None,
        source=str(row.get("source", "")),
    )
