"""litellm is imported, configured and quietened in one place: ``providers/_litellm.py``."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

from sa01.providers import _litellm

PROVIDERS = Path(__file__).resolve().parents[3] / "sa01" / "providers"


def _litellm_imports(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(name == "litellm" or name.startswith("litellm.") for name in names):
            lines.append(node.lineno)
    return lines


def test_no_provider_module_but_one_imports_litellm_or_sets_its_environment() -> None:
    # Wait for an import of litellm another test left running in a thread: CPython 3.11
    # can fail ast.parse while another thread compiles ("AST constructor recursion depth").
    _litellm.import_litellm()
    offenders = {
        path.name: _litellm_imports(path)
        for path in PROVIDERS.glob("*.py")
        if path.name != "_litellm.py" and _litellm_imports(path)
    }
    setting_env = [
        path.name
        for path in PROVIDERS.glob("*.py")
        if path.name != "_litellm.py" and re.search(r"environ\b.*LITELLM_", path.read_text())
    ]

    assert offenders == {}
    assert setting_env == []
    assert _litellm_imports(PROVIDERS / "_litellm.py")


async def test_litellm_is_loaded_once_quiet_and_without_callbacks() -> None:
    first = await _litellm.load_litellm()
    second = _litellm.import_litellm()

    assert first is second
    assert first.suppress_debug_info is True
    assert first.callbacks == [] and first.success_callback == [] == first.failure_callback
    for name in _litellm.LITELLM_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING
