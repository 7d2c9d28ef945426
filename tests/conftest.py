"""Test configuration: fixtures live in ``tests/fix_*.py`` (see tests/README.md)."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

pytest_plugins = ["tests.fix_services", "tests.fix_stack"]
