"""LLM fallback chains per use case: the seed's table by default, or one TOML file.

``SA01_LLM_CHAINS_FILE`` names a file such as::

    [chains]
    chat = ["openai/gpt-4o", "anthropic/claude-3-5-sonnet-latest"]
    fast = ["openai/gpt-4o-mini"]

    [models."openai/gpt-4o"]
    api_base = "http://127.0.0.1:8001/v1"
    timeout_seconds = 20

    [breaker]
    consecutive_failures = 5
    wait_seconds = 30

Use cases missing from the file keep the seed's chain. Keys come from each provider's
usual variable (``OPENAI_API_KEY``, ...), never from the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sa01.core.errors import ConfigurationError
from sa01.core.settings import Settings

__all__ = ["SEED_CHAINS", "BreakerSettings", "ChainsConfig", "ModelConfig", "load_chains"]

#: The seed's table (SRS section 5.1), as litellm model names.
SEED_CHAINS: dict[str, list[str]] = {
    "chat": [
        "openai/gpt-4o",
        "anthropic/claude-3-5-sonnet-latest",
        "openrouter/qwen/qwen-2.5-72b-instruct",
    ],
    "coding": [
        "anthropic/claude-3-5-sonnet-latest",
        "openai/gpt-4o",
        "deepseek/deepseek-coder",
    ],
    "fast": [
        "openai/gpt-4o-mini",
        "anthropic/claude-3-haiku-20240307",
        "openrouter/meta-llama/llama-3.1-8b-instruct",
    ],
}


class ModelConfig(BaseModel):
    """Where and how long to ask one model."""

    model_config = ConfigDict(extra="forbid")

    api_base: str | None = None
    timeout_seconds: float | None = Field(None, gt=0)


class BreakerSettings(BaseModel):
    """Breaker settings of every LLM link (defaults from ``SA01_LLM_BREAKER_*``)."""

    model_config = ConfigDict(extra="forbid")

    consecutive_failures: int | None = Field(None, ge=1)
    failure_rate_percent: float | None = Field(None, gt=0, le=100)
    minimum_calls: int | None = Field(None, ge=1)
    window_calls: int | None = Field(None, ge=1)
    wait_seconds: float | None = Field(None, gt=0)
    half_open_calls: int | None = Field(None, ge=1)


class ChainsConfig(BaseModel):
    """Chains per use case, per-model settings and the breakers' settings."""

    model_config = ConfigDict(extra="forbid")

    chains: dict[str, list[str]] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)


def load_chains(settings: Settings) -> ChainsConfig:
    """The chains in force: the file's, else the configured model, else the seed's table."""
    if settings.llm_chains_file:
        path = Path(settings.llm_chains_file)
        try:
            document = tomllib.loads(path.read_text())
            loaded = ChainsConfig.model_validate(document)
        except OSError as exc:
            raise ConfigurationError(f"cannot read SA01_LLM_CHAINS_FILE {path}: {exc}") from exc
        except (tomllib.TOMLDecodeError, ValidationError) as exc:
            raise ConfigurationError(f"{path} is not a valid chains file: {exc}") from exc
        unknown = sorted(set(loaded.chains) - set(SEED_CHAINS))
        if unknown:
            raise ConfigurationError(f"{path}: unknown use cases {unknown}; use chat, coding, fast")
        empty = sorted(name for name, models in loaded.chains.items() if not models)
        if empty:
            raise ConfigurationError(f"{path}: chains {empty} have no model")
        return ChainsConfig(
            chains={**SEED_CHAINS, **loaded.chains}, models=loaded.models, breaker=loaded.breaker
        )
    if (
        settings.llm_api_base
        or settings.llm_fallback_models
        or settings.llm_model != "openai/gpt-4o"
    ):
        models = [settings.llm_model] + [
            m.strip() for m in settings.llm_fallback_models.split(",") if m.strip()
        ]
        return ChainsConfig(
            chains={use_case: list(models) for use_case in SEED_CHAINS},
            models={m: ModelConfig(api_base=settings.llm_api_base) for m in models},
        )
    return ChainsConfig(chains={k: list(v) for k, v in SEED_CHAINS.items()})
