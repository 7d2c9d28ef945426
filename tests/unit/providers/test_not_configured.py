"""Providers with no configuration read not_configured: left out, at no cost."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.audio import build_audio_chains
from sa01.providers.configured import unconfigured_providers
from sa01.providers.health import multimodal_probes, multimodal_specs
from sa01.providers.somabrain_health import SomaBrainProbe
from sa01.providers.storage import build_storage_chain
from sa01.resilience.health import DEFAULT_SERVICES, DegradationLevel
from sa01.resilience.monitor import DegradationMonitor
from sa01.resilience.probes import default_probes
from schemas.messages import DegradationEvent, ServiceState
from streams.console import Console, format_status
from streams.preflight import summary

NO_KEYS: dict[str, object] = {
    "somabrain_url": None,
    "openai_api_key": None,
    "elevenlabs_api_key": None,
    "deepgram_api_key": None,
    "aws_access_key_id": None,
    "aws_secret_access_key": None,
    "storage_chain": "s3,local",
    "tts_chain": "elevenlabs,openai,native",
    "stt_chain": "openai,deepgram,native",
    "health_probes": "somabrain,storage,audio",
}


def plain(tmp_path: Path, **update: object) -> Settings:
    """Settings as a plain ``make run`` has them: no provider configured."""
    values = {**NO_KEYS, "storage_local_root": str(tmp_path / "storage"), **update}
    return Settings().model_copy(update=values)


async def status_of(settings: Settings) -> tuple[dict[str, str], str, dict[str, object]]:
    metrics = Metrics()
    audio = build_audio_chains(settings, metrics)
    storage = build_storage_chain(settings, metrics)
    somabrain = SomaBrainProbe(settings) if settings.somabrain_url else None
    probes = default_probes(settings, somabrain) + multimodal_probes(settings, audio, storage)
    published: list[DegradationEvent] = []

    async def publish(event: DegradationEvent) -> None:
        published.append(event)

    monitor = DegradationMonitor(
        probes, (*DEFAULT_SERVICES, *multimodal_specs(audio, storage)), metrics, publish=publish
    )
    try:
        for probe in probes:
            await monitor.observe(probe)
    finally:
        for probe in probes:
            await probe.close()
        await audio.close()
        await storage.close()
    document = monitor.status().as_json()
    services: dict[str, dict[str, str]] = document["services"]  # type: ignore[assignment]
    links = {
        "tts": ",".join(link.name for link in audio.tts.links),
        "stt": ",".join(link.name for link in audio.stt.links),
        "storage": ",".join(link.name for link in storage.chain.links),
    }
    states = {name: health["state"] for name, health in services.items()}
    return states, str(document["overall"]), {**links, "levels": services}


async def test_a_plain_run_reports_unconfigured_providers_without_degrading_anything(
    tmp_path: Path,
) -> None:
    states, overall, details = await status_of(plain(tmp_path))

    off = [name for name, state in states.items() if state == "not_configured"]
    assert sorted(off) == [
        "somabrain",
        "storage.s3",
        "stt.deepgram",
        "stt.openai",
        "tts.elevenlabs",
        "tts.openai",
    ]
    assert states["storage"] == "healthy", "a store left out does not degrade its chain"
    assert states["conversation"] == "healthy", "no SomaBrain configured is not an outage"
    assert overall == "none"
    assert (details["tts"], details["stt"], details["storage"]) == ("native", "native", "local")


async def test_a_configured_provider_is_judged_by_its_breaker_or_probe(tmp_path: Path) -> None:
    settings = plain(
        tmp_path,
        somabrain_url="http://127.0.0.1:9",
        elevenlabs_api_key=SecretStr("xi-key"),
        deepgram_api_key=SecretStr("dg-key"),
    )
    states, overall, details = await status_of(settings)

    assert states["somabrain"] == "unavailable"
    assert states["tts.elevenlabs"] == "healthy" and states["stt.deepgram"] == "healthy"
    assert overall == DegradationLevel.MODERATE.name.lower(), "SomaBrain down costs moderate"
    assert (details["tts"], details["stt"]) == ("elevenlabs,native", "deepgram,native")


def test_unconfigured_providers_and_the_run_summary(tmp_path: Path) -> None:
    settings = plain(tmp_path)
    assert unconfigured_providers(settings)["somabrain"].startswith("SA01_SOMABRAIN_URL")
    assert not settings.memory_active
    lines = summary(settings)
    assert "off       storage.s3: not configured (AWS_ACCESS_KEY_ID and" in "\n".join(lines)
    assert sum(line.startswith("off ") for line in lines) == 6
    only_s3 = plain(tmp_path, storage_chain="s3")
    assert "storage.s3" not in unconfigured_providers(only_s3), "a chain keeps its last store"


def test_status_shows_not_configured_at_a_glance() -> None:
    document = {
        "overall": "none",
        "services": {
            "somabrain": {
                "state": ServiceState.NOT_CONFIGURED.value,
                "level": "none",
                "circuit": "closed",
                "reason": "SA01_SOMABRAIN_URL is not set: memory is off",
            }
        },
    }
    [_, row, *_] = format_status(document, Console(colour=False))
    assert row.split()[:3] == ["somabrain", "not_configured", "none"]
