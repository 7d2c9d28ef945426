"""``service_health``: a changelog-backed GlobalTable, the fold of ``degradation.events``.

Keyed by service name; the value is the JSON of the service's latest health. Every
worker holds the whole table and a restarted worker recovers it from the changelog.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from sa01.resilience.health import ServiceHealth
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
    """The new row for ``event``'s service, or None when the event is older than the row."""
    if current is not None:
        known = datetime.fromisoformat(str(current["since"]))
        if event.observed_at < known:
            return None
        if current.get("event_id") == event.event_id:
            return None
    row = ServiceHealth.from_event(event).as_json()
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
