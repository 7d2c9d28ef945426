"""The metrics surface, validated: what a worker and a relay serve on ``/metrics`` passes
``promtool check metrics``, carries the seed's names with their types and labels, and is
documented in docs/metrics.md; the Prometheus config, the alert rules and the Grafana
dashboard in ``deploy/`` are valid and use only metrics that exist.

promtool comes from ``scripts/install-promtool.sh`` (PATH, else ``.cache/promtool``, else
extracted from Debian's ``prometheus`` package); a machine where it cannot be had fails
these tests, it never skips them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from loopback import FailureMode, LLMServer
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.resilience.health import DEFAULT_SERVICES
from tests.support.kafka import inbound, produce_inbound, produce_raw
from tests.support.worker import ROOT, WorkerFactory, WorkerProcess, free_port

INSTALL_PROMTOOL = ROOT / "scripts" / "install-promtool.sh"
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sa01-resilience.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "sa01.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"
COMPOSE = ROOT / "docker-compose.yml"
FALLBACK = "anthropic/claude-3-5-sonnet-latest"

#: The seed's metrics (SRS section 11) as served: sample name → (type, label names).
#: Counters carry the ``_total`` suffix the client library adds (docs/contracts.md).
SEED_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "service_health_state": ("gauge", frozenset({"service"})),
    "service_degradation_level": ("gauge", frozenset({"service"})),
    "outbox_messages_pending": ("gauge", frozenset()),
    "dlq_messages_total": ("counter", frozenset({"topic"})),
    "llm_failover_count_total": ("counter", frozenset({"from_provider", "to_provider"})),
}

#: Labelled samples that exist only once something happened: the test makes them happen.
WORKER_MUST_SERVE = ("llm_failover_count_total", "dlq_messages_total", "service_health_state")

#: What the dashboard must show (issue 8): health, levels, breakers, failovers, the
#: outbox backlog, relay lag and throughput, dead letters, worker throughput and latency.
DASHBOARD_MUST_USE = {
    "service_health_state",
    "service_degradation_level",
    "circuit_breaker_state",
    "llm_failover_count_total",
    "outbox_messages_pending",
    "outbox_relay_lag_seconds",
    "outbox_published_total",
    "dlq_messages_total",
    "conversation_messages_total",
    "conversation_processing_seconds_bucket",
}

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
}
#: Series Prometheus makes itself, per target.
SYNTHETIC_SERIES = {"up"}
#: Grafana's interval variables, replaced by a duration before PromQL is parsed.
GRAFANA_VARIABLES = ("$__rate_interval", "$__range", "$__interval")


# ------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Declared:
    """A metric as core/metrics.py declares it, under the name it is served and documented."""

    name: str
    type: str
    labels: frozenset[str]

    @property
    def samples(self) -> set[str]:
        """The sample names a query may use."""
        if self.type == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum"}
        return {self.name}


def declared_metrics() -> dict[str, Declared]:
    """Every metric of a fresh :class:`Metrics`, keyed by served name (counters: ``_total``)."""
    found: dict[str, Declared] = {}
    for value in vars(Metrics()).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        kind = value._type
        name = f"{value._name}_total" if kind == "counter" else value._name
        found[name] = Declared(name, kind, frozenset(value._labelnames))
    return found


def known_samples() -> set[str]:
    return set().union(*(d.samples for d in declared_metrics().values())) | SYNTHETIC_SERIES


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def grafana_to_promql(expr: str) -> str:
    for variable in GRAFANA_VARIABLES:
        expr = expr.replace(variable, "5m")
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(where, expr)`` of every query of the dashboard, rows' panels included."""
    document = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"panel {panel['id']} {panel['title']!r}", target["expr"]))
            walk(panel.get("panels", []))

    walk(document["panels"])
    return found


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@dataclass(frozen=True)
class DocumentedMetric:
    name: str
    type: str
    labels: frozenset[str]
    served_by: str
    to_verify: bool


def documented_metrics() -> dict[str, DocumentedMetric]:
    """Rows of docs/metrics.md's tables: | `name` | type | labels | served by | meaning |."""
    rows: dict[str, DocumentedMetric] = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = re.match(r"\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|([^|]*)\|([^|]*)\|([^|]*)\|", line)
        if not match:
            continue
        name, kind, labels, served_by = (g.strip() for g in match.groups())
        rows[name] = DocumentedMetric(
            name,
            kind,
            frozenset(label.strip() for label in labels.split(",") if label.strip()),
            served_by,
            "<!-- verify -->" in line,
        )
    return rows


def check_metrics(promtool: str, exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
    )


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=5.0)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return response.text


@dataclass(frozen=True)
class Family:
    type: str
    samples: list[tuple[str, dict[str, str], float]]


def families(exposition: str) -> dict[str, Family]:
    """Families by served name: ``dlq_messages_total`` for a counter, as queried."""
    found: dict[str, Family] = {}
    for family in text_string_to_metric_families(exposition):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        found[name] = Family(
            family.type, [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
        )
    return found


def wait_for(
    fetch: Callable[[], str], condition: Callable[[dict[str, Family]], bool], what: str
) -> str:
    deadline = time.monotonic() + 120
    text = ""
    while time.monotonic() < deadline:
        try:
            text = fetch()
            if condition(families(text)):
                return text
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last scrape:\n{text}")


def value_of(found: dict[str, Family], name: str) -> float:
    family = found.get(name)
    return sum(v for n, _, v in family.samples if n == name) if family else 0.0


def has_samples(found: dict[str, Family], name: str) -> bool:
    family = found.get(name)
    return family is not None and any(n == name for n, _, _ in family.samples)


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool's path: found, or installed by scripts/install-promtool.sh."""
    result = subprocess.run(
        [str(INSTALL_PROMTOOL)], capture_output=True, text=True, timeout=900, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        pytest.fail(
            "promtool is needed to validate the metrics, and scripts/install-promtool.sh "
            f"could not provide it (exit {result.returncode}):\n{result.stderr.strip()}\n"
            "Install Debian's `prometheus` package, or put promtool in PATH.",
            pytrace=False,
        )
    return lines[-1]


@pytest.fixture
def relay_metrics(stack: Settings, workers: WorkerFactory) -> Iterator[str]:
    """A standalone ``publish-outbox`` that serves /metrics and holds the relay lock."""
    settings = stack.model_copy(update={"relay_web_port": free_port()})
    relay = WorkerProcess(
        settings, workers.directory / "relay-metrics.log", {}, command=("publish-outbox",)
    )
    workers.started.append(relay)
    url = f"http://127.0.0.1:{settings.relay_web_port}/metrics"

    def fetch() -> str:
        if not relay.alive:
            raise AssertionError(f"the relay exited:\n{relay.log_tail()}")
        return scrape(url)

    wait_for(fetch, lambda f: value_of(f, "outbox_relay_active") == 1, "the relay to be active")
    yield url


def chains_file(tmp_path: Path, primary: LLMServer, fallback: LLMServer) -> Path:
    path = tmp_path / "chains.toml"
    path.write_text(
        f"""
[chains]
chat = ["openai/gpt-4o", "{FALLBACK}"]

[models."openai/gpt-4o"]
api_base = "{primary.openai_base_url}"
timeout_seconds = 10

[models."{FALLBACK}"]
api_base = "{fallback.base_url}"
timeout_seconds = 30
"""
    )
    return path


# --------------------------------------------------------------------------- tests
def test_promtool_lints_and_flags_a_badly_named_counter(promtool: str) -> None:
    clean = check_metrics(promtool, "# HELP good_total A counter.\n# TYPE good_total counter\n")
    bad = check_metrics(promtool, "# HELP bad A counter.\n# TYPE bad counter\nbad 1\n")

    assert (clean.returncode, clean.stdout + clean.stderr) == (0, "")
    assert bad.returncode != 0
    assert 'counter metrics should have "_total" suffix' in bad.stdout + bad.stderr


@pytest.mark.integration
def test_worker_and_relay_metrics_pass_promtool_and_carry_the_seed_metrics(
    promtool: str,
    stack: Settings,
    workers: WorkerFactory,
    relay_metrics: str,
    llm_server: LLMServer,
    fallback_llm_server: LLMServer,
    tmp_path: Path,
) -> None:
    # The primary model fails (a failover), a poison message is dead-lettered, the
    # standalone relay (not the worker's standby) publishes what the worker commits.
    llm_server.set_mode(FailureMode.ERROR_500)
    settings = stack.model_copy(
        update={
            "responder": "litellm",
            "llm_chains_file": str(chains_file(tmp_path, llm_server, fallback_llm_server)),
            "openai_api_key": SecretStr("sk-test"),
            "anthropic_api_key": SecretStr("sk-ant-test"),
            "relay_enabled_in_worker": False,
            "memory_enabled": False,
            "somabrain_url": "http://127.0.0.1:9",
            "health_probes": "postgres,kafka,redis,somabrain",
        }
    )
    worker = workers.start(settings)
    produce_inbound(settings, [inbound("metrics, please", session="s-metrics")])
    produce_raw(settings, settings.topic("conversation.inbound"), [(b"k", b"not json")])

    worker_text = wait_for(
        lambda: worker.get("/metrics").text,
        lambda f: (
            all(has_samples(f, name) for name in WORKER_MUST_SERVE)
            and value_of(f, "conversation_messages_total") >= 2
        ),
        "a failover, a dead letter and two handled messages on the worker",
    )
    relay_text = wait_for(
        lambda: scrape(relay_metrics),
        lambda f: value_of(f, "outbox_published_total") >= 2,
        "the relay to publish the reply and the dead letter",
    )

    for who, text in (("worker", worker_text), ("relay", relay_text)):
        result = check_metrics(promtool, text)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), (
            f"promtool check metrics on the {who}'s /metrics:\n{result.stdout}{result.stderr}"
        )

    served = families(worker_text)
    for name, (kind, labels) in SEED_METRICS.items():
        assert name in served, f"{name} is not served by the worker"
        assert served[name].type == kind, (name, served[name].type)
        label_sets = {frozenset(lb) for n, lb, _ in served[name].samples if n == name}
        assert label_sets == {labels}, (name, label_sets)
    assert (
        "llm_failover_count_total",
        {"from_provider": "openai/gpt-4o", "to_provider": FALLBACK},
        1.0,
    ) in served["llm_failover_count_total"].samples
    assert {lb["topic"] for _, lb, _ in served["dlq_messages_total"].samples} == {
        settings.topic("conversation.inbound.dlq")
    }
    assert {lb["service"] for _, lb, _ in served["service_health_state"].samples} >= {
        "postgres",
        "kafka",
        "redis",
        "somabrain",
    }

    relay = families(relay_text)
    assert value_of(relay, "outbox_relay_active") == 1
    assert "outbox_messages_pending" in relay
    assert "outbox_relay_lag_seconds" in relay

    # Everything served is documented, with the type the server announces.
    documented = documented_metrics()
    for who, found in (("worker", served), ("relay", relay)):
        for name, family in found.items():
            base = name.removesuffix("_created")
            if name != base and any(base in (d, d.removesuffix("_total")) for d in documented):
                continue  # the client library's creation timestamps of counters and histograms
            assert name in documented, f"{who} serves {name}, missing from docs/metrics.md"
            assert documented[name].type == family.type, (name, family.type)


def test_every_declared_metric_is_documented_with_its_type_and_labels() -> None:
    declared = declared_metrics()
    documented = documented_metrics()

    for name, metric in declared.items():
        assert name in documented, f"{name} (core/metrics.py) is missing from docs/metrics.md"
        row = documented[name]
        assert (row.type, row.labels) == (metric.type, metric.labels), name
        assert row.served_by, name
    for name, row in documented.items():
        if not row.to_verify:
            assert name in declared, f"docs/metrics.md documents {name}; core/metrics.py lacks it"


def test_the_seed_metrics_are_declared_as_documented() -> None:
    declared = declared_metrics()

    for name, (kind, labels) in SEED_METRICS.items():
        assert (declared[name].type, declared[name].labels) == (kind, labels), name


def test_prometheus_configs_are_valid_and_scrape_the_worker_and_the_relay(promtool: str) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    for config in ("prometheus.yml", "prometheus.local.yml"):
        result = subprocess.run(
            [promtool, "check", "config", str(PROMETHEUS_DIR / config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }

    assert jobs == {
        "sa01-worker": ["worker:6066", "background-worker:6068"],
        "sa01-relay": ["relay:6067"],
    }
    assert {"worker", "background-worker", "relay", "prometheus", "grafana"} <= set(compose)
    assert "127.0.0.1:6066:6066" in compose["worker"]["ports"]
    assert "127.0.0.1:6068:6068" in compose["background-worker"]["ports"]
    assert compose["worker"]["environment"]["SA01_WORKER_ROLE"] == "replies"
    assert compose["background-worker"]["environment"]["SA01_WORKER_ROLE"] == "background"
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["prometheus"]["volumes"]


def test_alert_rules_pass_promtool_and_use_only_existing_metrics(promtool: str) -> None:
    check = subprocess.run(
        [promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    known = known_samples()

    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    assert unit.returncode == 0, unit.stdout + unit.stderr
    for rule in alert_rules():
        unknown = promql_metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']} uses metrics that do not exist: {unknown}"
        assert rule["annotations"]["runbook_url"].startswith("docs/runbooks.md#"), rule["alert"]


def test_dashboard_queries_parse_and_use_only_existing_metrics(
    promtool: str, tmp_path: Path
) -> None:
    exprs = dashboard_exprs()
    known = known_samples()
    used: set[str] = set()
    rules = []
    for n, (where, expr) in enumerate(exprs):
        promql = grafana_to_promql(expr)
        assert "$" not in promql, f"{where}: unknown Grafana variable in {expr!r}"
        names = promql_metric_names(promql)
        assert names, f"{where}: no metric in {expr!r}"
        assert not names - known, f"{where} uses metrics that do not exist: {names - known}"
        used |= names
        rules.append({"record": f"sa01:dashboard_query:{n}", "expr": promql})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    parsed = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )

    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
    assert DASHBOARD_MUST_USE <= used, DASHBOARD_MUST_USE - used


def test_grafana_provisioning_points_the_dashboard_at_the_provisioned_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]

    assert dashboard["uid"] == "sa01-resilience"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_alert_links_to_a_runbook_section_that_exists() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', runbooks))
    anchors |= {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", runbooks, flags=re.MULTILINE)
    }

    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        anchor = url.split("#", 1)[1]
        targets = (
            [anchor.replace("{{ $labels.service }}", spec.name) for spec in DEFAULT_SERVICES]
            if "{{ $labels.service }}" in anchor
            else [anchor]
        )
        missing = [target for target in targets if target not in anchors]
        assert not missing, f"{rule['alert']} links to missing runbook sections {missing}"
