"""The Kafka probe against a refused port: librdkafka's lines go to the logger, not stderr."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaException

from sa01.core.settings import Settings
from sa01.resilience.probes import KafkaProbe
from tests.support.worker import free_port


async def test_a_refused_broker_prints_nothing_raw_to_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Nothing listens on the port: each connect is refused at once, as when a broker stops.
    settings = Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", health_timeout_seconds=1.0
    )
    probe = KafkaProbe(settings)
    for _ in range(2):
        with pytest.raises(KafkaException):
            await probe.check()

    raw = [line for line in capfd.readouterr().err.splitlines() if line.startswith("%")]
    assert not raw, raw[:3]
