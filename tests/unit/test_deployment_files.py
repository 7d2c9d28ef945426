"""docker-compose.yml and the Dockerfile are safe by default: loopback ports, no default
secret, pinned images, no Prometheus lifecycle API, no anonymous Grafana, a non-root user.

Where a ``docker compose`` binary exists, ``docker compose config`` is checked too."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY\b|API_KEY", re.IGNORECASE)
REFERENCE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")
REQUIRED_SECRETS = {"SA01_POSTGRES_PASSWORD", "SA01_REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}


def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE.read_text())
    return dict(document["services"])


def published(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(host address, the whole entry) of every published port."""
    found: list[tuple[str | None, str]] = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip"), str(port)))
            continue
        parts = str(port).rsplit(":", 2)
        found.append((parts[0] if len(parts) == 3 else None, str(port)))
    return found


def test_every_published_port_binds_loopback() -> None:
    ports = [(name, entry) for name, s in services().items() for entry in published(s)]

    assert ports, "nothing is published: the test would prove nothing"
    for name, (address, entry) in ports:
        assert address == "127.0.0.1", f"{name} publishes {entry} beyond loopback"
    assert "0.0.0.0:" not in COMPOSE.read_text()


def test_no_secret_has_a_default_and_the_required_ones_say_which() -> None:
    text = COMPOSE.read_text()
    references = list(REFERENCE.finditer(text))
    required = {m["name"] for m in references if m["op"] == ":?"}

    assert required >= REQUIRED_SECRETS
    for match in references:
        if match["op"] == ":?":
            assert match["name"] in match["arg"], f"{match[0]} does not name the variable"
        elif SECRET_NAME.search(match["name"]):
            assert match["op"] == ":-" and match["arg"] == "", f"{match[0]} has a default"
    for name, service in services().items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if SECRET_NAME.search(key) and value not in (None, ""):
                assert "${" in str(value), f"{name}.{key} holds a literal secret"
    app = services()["worker"]["environment"]
    assert "${SA01_POSTGRES_PASSWORD:?" in app["SA01_DATABASE_URL"]
    assert "${SA01_REDIS_PASSWORD:?" in app["SA01_REDIS_URL"]


def test_images_are_pinned_to_a_release() -> None:
    images = {name: s["image"] for name, s in services().items() if "image" in s}

    assert {"kafka", "postgres", "redis", "prometheus", "grafana"} <= set(images)
    for name, image in images.items():
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        # x.y.z, or PostgreSQL's major.minor (its minor is the patch release)
        assert re.match(r"v?\d+\.\d+(\.\d+)?(-[a-z]+)?$", tag), f"{name}: {image} floats"
        assert tag.count(".") == 2 or name == "postgres", f"{name}: {image} floats"
    dockerfile = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert base and re.search(r":\d+\.\d+\.\d+", base[1]), "the base image is not pinned"


def test_prometheus_has_no_lifecycle_api_and_grafana_no_anonymous_access() -> None:
    prometheus, grafana = services()["prometheus"], services()["grafana"]

    assert not any("lifecycle" in str(arg) for arg in prometheus.get("command", []))
    assert grafana["environment"].get("GF_AUTH_ANONYMOUS_ENABLED") == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana["environment"]
    major = int(grafana["image"].rsplit(":", 1)[1].split(".")[0])
    assert major >= 12, "Grafana 11 is past its support"


def test_the_image_runs_as_a_non_root_user() -> None:
    lines = [line.split() for line in DOCKERFILE.read_text().splitlines() if line.strip()]
    users = [words[1] for words in lines if words[0] == "USER"]
    last_instruction = [words[0] for words in lines if not words[0].startswith("#")][-1]

    assert users, "no USER in the Dockerfile"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert last_instruction == "CMD"


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose binary: the YAML checks above stand for it",
)
def test_compose_config_refuses_without_secrets_and_binds_loopback() -> None:
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin"}
    refused = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    secrets = {name: "x" * 24 for name in REQUIRED_SECRETS}
    config = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env | secrets,
        cwd="/",
    )

    assert refused.returncode != 0 and "SA01_" in refused.stderr + refused.stdout
    assert config.returncode == 0, config.stderr
    assert '"host_ip": "0.0.0.0"' not in config.stdout
