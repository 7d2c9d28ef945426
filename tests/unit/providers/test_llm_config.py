"""Chains per use case: the seed's table, one TOML file, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sa01.core.errors import ConfigurationError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.llm_chain import build_chain_responder
from sa01.providers.llm_config import SEED_CHAINS, load_chains

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "llm-chains.example.toml"


def test_without_a_file_the_seed_table_is_in_force() -> None:
    config = load_chains(Settings())
    assert config.chains == SEED_CHAINS
    assert config.chains["coding"][0].startswith("anthropic/")


def test_the_example_file_loads_with_its_breaker_settings() -> None:
    config = load_chains(Settings(llm_chains_file=str(EXAMPLE)))
    assert config.breaker.consecutive_failures == 5
    assert config.models["openai/gpt-4o"].timeout_seconds == 20
    responder = build_chain_responder(Settings(llm_chains_file=str(EXAMPLE)), Metrics())
    assert set(responder.chains) == {"chat", "coding", "fast"}
    assert "openai/gpt-4o" in responder.states()


def test_a_file_keeps_the_seed_chain_for_use_cases_it_leaves_out(tmp_path: Path) -> None:
    path = tmp_path / "chains.toml"
    path.write_text('[chains]\nfast = ["openai/gpt-4o-mini"]\n[breaker]\nwait_seconds = 7\n')
    config = load_chains(Settings(llm_chains_file=str(path)))
    assert config.chains["fast"] == ["openai/gpt-4o-mini"]
    assert config.chains["chat"] == SEED_CHAINS["chat"]
    responder = build_chain_responder(Settings(llm_chains_file=str(path)), Metrics())
    link = responder.chains["fast"].links[0]
    assert link.breaker.config.wait_in_open == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[chains]\nbanter = ["openai/gpt-4o"]\n', "unknown use cases"),
        ("[chains]\nchat = []\n", "have no model"),
        ('[chains]\nchat = "openai/gpt-4o"\n', "not a valid chains file"),
        ("[breaker]\nwait_seconds = -1\n", "not a valid chains file"),
        ("this is not toml", "not a valid chains file"),
    ],
)
def test_a_wrong_file_is_a_clear_configuration_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "chains.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        load_chains(Settings(llm_chains_file=str(path)))


def test_a_missing_file_is_a_clear_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read SA01_LLM_CHAINS_FILE"):
        load_chains(Settings(llm_chains_file=str(tmp_path / "absent.toml")))
