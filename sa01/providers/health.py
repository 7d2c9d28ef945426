"""Health of the audio and storage providers: their probes and service specs.

Each provider is a service of its own (``tts.elevenlabs``, ``storage.s3``, ...) and each
chain one more (``tts``, ``stt``, ``storage``), so they appear in ``service_health``,
``/status`` and the metrics like every other service. Stores are checked actively
(S3 ``HeadBucket``, the local root, Redis ``PING``); audio providers, which cost money
per call, are judged by their breakers; a provider whose package is missing says so, and one
with no configuration reads ``not_configured`` (left out of its chain, at no cost: see
:mod:`sa01.providers.configured`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from sa01.core.settings import Settings
from sa01.providers.audio import NATIVE, AudioChains, KokoroTTS
from sa01.providers.storage import ObjectStore, StorageChain
from sa01.resilience.circuit_breaker import CircuitBreaker
from sa01.resilience.health import DegradationLevel, ServiceSpec, provider_specs
from sa01.resilience.probes import (
    BreakerProbe,
    ChainProbe,
    Probe,
    StaticProbe,
    StoreProbe,
    probes_enabled,
)
from schemas.messages import ServiceState

__all__ = ["multimodal_probes", "multimodal_specs"]


def multimodal_specs(audio: AudioChains, storage: StorageChain) -> list[ServiceSpec]:
    """The specs of the TTS, STT and storage chains and of their providers."""
    tts = [link.name for link in audio.tts.links if link.name != NATIVE] + list(audio.missing)
    stt = [link.name for link in audio.stt.links if link.name != NATIVE]
    specs = [
        *provider_specs("tts", tts, fallback="browser/native voice"),
        *provider_specs("stt", stt, fallback="browser/native transcript"),
        *provider_specs("storage", [s.name for s in storage.stores], fallback="upload.retry"),
    ]
    if "kokoro" in audio.missing:
        # An optional voice that is not installed is reported, but costs nothing.
        specs = [s for s in specs if s.name != "tts.kokoro"]
        specs.append(
            ServiceSpec("tts.kokoro", DegradationLevel.NONE, DegradationLevel.NONE, fallback="tts")
        )
    # A provider with no configuration is reported too, and costs nothing either.
    for name in sorted({**audio.unconfigured, **storage.unconfigured}):
        chain = name.split(".", 1)[0]
        specs.append(
            ServiceSpec(name, DegradationLevel.NONE, DegradationLevel.NONE, fallback=chain)
        )
    return specs


def _unconfigured_probes(settings: Settings, unconfigured: Mapping[str, str]) -> list[Probe]:
    return [
        StaticProbe(settings, name, ServiceState.NOT_CONFIGURED, why)
        for name, why in sorted(unconfigured.items())
    ]


def _audio_probes(settings: Settings, audio: AudioChains, chain: str) -> list[Probe]:
    links = audio.tts.links if chain == "tts" else audio.stt.links
    probes: list[Probe] = [
        BreakerProbe(settings, f"{chain}.{link.name}", _single_state(link.name, link.breaker))
        for link in links
        if link.name != NATIVE
    ]
    if chain == "tts":
        probes += [
            StaticProbe(settings, f"tts.{name}", ServiceState.UNAVAILABLE, KokoroTTS.NOT_INSTALLED)
            for name in audio.missing
        ]
    return probes


def _checked_with(store: ObjectStore, breaker: CircuitBreaker) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        # Reading the state lets an idle breaker move on (open -> half_open) and keeps
        # circuit_breaker_state current even when no upload calls through it.
        _ = breaker.state
        await store.check()

    return check


def _single_state(name: str, breaker: CircuitBreaker) -> Callable[[], Mapping[str, str]]:
    return lambda: {name: str(breaker.state)}


def multimodal_probes(settings: Settings, audio: AudioChains, storage: StorageChain) -> list[Probe]:
    """One probe per provider and one per chain, as ``SA01_HEALTH_PROBES`` asks
    (``audio``, ``storage``)."""
    probes: list[Probe] = []
    if probes_enabled(settings, "audio"):
        probes += _audio_chain_probes(settings, audio)
        probes += _unconfigured_probes(settings, audio.unconfigured)
    if probes_enabled(settings, "storage"):
        stores: list[Probe] = [
            StoreProbe(settings, f"storage.{link.name}", _checked_with(link.provider, link.breaker))
            for link in storage.chain.links
        ]
        probes += stores
        probes.append(ChainProbe(settings, "storage", stores))
        probes += _unconfigured_probes(settings, storage.unconfigured)
    return probes


def _audio_chain_probes(settings: Settings, audio: AudioChains) -> list[Probe]:
    probes: list[Probe] = []
    for chain in ("tts", "stt"):
        members = _audio_probes(settings, audio, chain)
        probes += members
        # A provider that is not installed is skipped by the chain: it does not make the
        # chain degraded.
        usable = [p for p in members if not isinstance(p, StaticProbe)]
        if usable:
            probes.append(ChainProbe(settings, chain, usable))
    return probes
