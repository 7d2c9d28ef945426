"""Chains per use case: the seed's table, one TOML file, clear errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sa01.core.errors import ConfigurationError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.llm_chain import ChainResponder, build_chain_responder, build_responder_chain
from sa01.providers.llm_config import SEED_CHAINS, load_chains
from sa01.providers.responder import EchoResponder
from sa01.resilience.circuit_breaker import CircuitBreaker

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


def test_the_responder_chain_exposes_every_model_breaker_once_by_its_circuit_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chains.toml"
    path.write_text(
        '[chains]\nchat = ["openai/a", "anthropic/b"]\nfast = ["openai/a"]\n'
        'coding = ["anthropic/b"]\n'
    )

    built = build_responder_chain(Settings(llm_chains_file=str(path)), Metrics())

    assert isinstance(built.responder, ChainResponder)
    assert set(built.breakers) == {"llm:openai/a", "llm:anthropic/b"}
    links = [link for chain in built.responder.chains.values() for link in chain.links]
    for link in links:
        assert built.breakers[link.breaker.name] is link.breaker, "a second copy of a breaker"
    assert all(isinstance(b, CircuitBreaker) for b in built.breakers.values())
    assert built.states() == {"openai/a": "closed", "anthropic/b": "closed"}
    built.breakers["llm:openai/a"].force_open()
    assert built.states()["openai/a"] == "forced_open"


def test_the_echo_responder_chain_has_no_breaker() -> None:
    built = build_responder_chain(Settings(responder="echo"), Metrics())

    assert isinstance(built.responder, EchoResponder)
    assert dict(built.breakers) == {}
    assert built.states() == {}


def test_the_responder_module_imports_no_llm_client_or_chain() -> None:
    source = Path(__file__).resolve().parents[3] / "sa01" / "providers" / "responder.py"
    imported = {
        node.module
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    imported |= {
        alias.name
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not {m for m in imported if m.startswith("sa01.providers.") or "litellm" in m}
