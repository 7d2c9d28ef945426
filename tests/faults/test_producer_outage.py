"""The shared broker stopped under the resilient producer: instant fallback, nothing lost.

``stops_services``: it stops the session's broker (run in the serial phase only). The
same body runs on a private broker in ``tests/integration/test_producer_gate.py``.
"""

from __future__ import annotations

import pytest

from sa01.core.settings import Settings
from tests.fix_services import ServiceEndpoints
from tests.integration.test_producer_gate import check_outage, send_across_a_stop

pytestmark = pytest.mark.faults


@pytest.mark.stops_services
async def test_the_shared_broker_stopped_mid_stream_sends_fall_back_at_once_and_all_arrive(
    stack: Settings, services: ServiceEndpoints
) -> None:
    settings = stack.model_copy(update={"producer_send_timeout_seconds": 30.0})
    outage = await send_across_a_stop(
        settings,
        lambda: services.control("stop", "kafka"),
        lambda: services.control("start", "kafka"),
        "shared-outage",
    )
    check_outage(outage, "shared-outage")
