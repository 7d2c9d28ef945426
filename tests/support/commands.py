"""Running ``faust -A streams`` commands as an operator would, in a subprocess."""

from __future__ import annotations

import subprocess

from sa01.core.settings import Settings
from tests.support.worker import FAUST, ROOT, settings_env


def command(
    settings: Settings, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``faust -A streams ARGS`` with ``settings`` in its environment; capture output."""
    env = {"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.update(settings_env(settings))
    return subprocess.run(
        [FAUST, "-A", "streams", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
