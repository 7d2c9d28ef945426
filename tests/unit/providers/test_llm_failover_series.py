"""Every switch an LLM chain can make is served at 0 before it first happens."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.llm_chain import build_chain_responder


def failover_series(metrics: Metrics) -> dict[tuple[str, str], float]:
    series: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "llm_failover_count_total":
                pair = (sample.labels["from_provider"], sample.labels["to_provider"])
                series[pair] = sample.value
    return series


def test_each_pair_of_every_chain_is_served_at_zero_before_any_failover(tmp_path: Path) -> None:
    path = tmp_path / "chains.toml"
    path.write_text(
        '[chains]\nchat = ["openai/a", "anthropic/b", "openrouter/c"]\nfast = ["openai/x"]\n'
        'coding = ["anthropic/b", "openai/a"]\n'
    )
    metrics = Metrics()

    build_chain_responder(Settings(llm_chains_file=str(path)), metrics)

    series = failover_series(metrics)
    assert series == {
        ("openai/a", "anthropic/b"): 0.0,
        ("anthropic/b", "openrouter/c"): 0.0,
        # openai/a -> openrouter/c when anthropic/b is skipped or fails as well
        ("openai/a", "openrouter/c"): 0.0,
        ("anthropic/b", "openai/a"): 0.0,
    }
