"""Which optional providers have no configuration at all.

A provider without configuration cannot answer, and that is not an outage: it is reported
``not_configured``, left out of its chain (no call, no failover, no breaker), and neither
degrades its chain nor raises the agent's level. A configured provider is judged by its probe
or its breaker. The rules, one per provider:

* ``somabrain``: ``SA01_SOMABRAIN_URL`` unset (memory is off: no recall, no memory records);
* ``tts.elevenlabs``: ``ELEVENLABS_API_KEY`` unset;
* ``tts.openai``, ``stt.openai``: ``OPENAI_API_KEY`` unset;
* ``stt.deepgram``: ``DEEPGRAM_API_KEY`` unset;
* ``storage.s3``: ``AWS_ACCESS_KEY_ID`` or ``AWS_SECRET_ACCESS_KEY`` unset (credentials are
  read from these two only), unless S3 is the only store of the chain.
"""

from __future__ import annotations

from pydantic import SecretStr

from sa01.core.settings import Settings

__all__ = ["audio_unconfigured", "storage_unconfigured", "unconfigured_providers"]


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def audio_unconfigured(settings: Settings, chain: str) -> dict[str, str]:
    """Links of the ``tts`` or ``stt`` chain without a key: link name → what is missing."""
    keys: dict[tuple[str, str], tuple[str, SecretStr | None]] = {
        ("tts", "elevenlabs"): ("ELEVENLABS_API_KEY", settings.elevenlabs_api_key),
        ("tts", "openai"): ("OPENAI_API_KEY", settings.openai_api_key),
        ("stt", "openai"): ("OPENAI_API_KEY", settings.openai_api_key),
        ("stt", "deepgram"): ("DEEPGRAM_API_KEY", settings.deepgram_api_key),
    }
    names = _names(settings.tts_chain if chain == "tts" else settings.stt_chain)
    missing: dict[str, str] = {}
    for name in names:
        if (chain, name) not in keys:
            continue
        variable, key = keys[(chain, name)]
        if key is None or not key.get_secret_value().strip():
            missing[name] = f"{variable} is not set"
    return missing


def storage_unconfigured(settings: Settings) -> dict[str, str]:
    """Stores of the storage chain without credentials: store name → what is missing."""
    names = _names(settings.storage_chain)
    if "s3" not in names or names == ["s3"]:
        return {}
    if settings.aws_access_key_id is None or settings.aws_secret_access_key is None:
        return {"s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"}
    return {}


def unconfigured_providers(settings: Settings) -> dict[str, str]:
    """Every provider with no configuration: service name → what is missing."""
    missing: dict[str, str] = {}
    if not settings.somabrain_url:
        missing["somabrain"] = "SA01_SOMABRAIN_URL is not set: memory is off"
    for chain in ("tts", "stt"):
        for name, why in audio_unconfigured(settings, chain).items():
            missing[f"{chain}.{name}"] = why
    for name, why in storage_unconfigured(settings).items():
        missing[f"storage.{name}"] = why
    return missing
