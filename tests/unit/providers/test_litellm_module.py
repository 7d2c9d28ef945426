"""litellm is imported, configured and quietened in one place: ``providers/_litellm.py``."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from sa01.providers import _litellm

PROVIDERS = Path(__file__).resolve().parents[3] / "sa01" / "providers"


#: Run in a process of its own: CPython 3.11's ast.parse can fail ("AST constructor
#: recursion depth mismatch") while another thread of the test process compiles a module
#: (a threaded import of litellm left running by another test).
_SCAN = """
import ast, json, sys
from pathlib import Path
found = {}
for path in sorted(Path(sys.argv[1]).glob("*.py")):
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(name == "litellm" or name.startswith("litellm.") for name in names):
            lines.append(node.lineno)
    found[path.name] = lines
print(json.dumps(found))
"""


def _litellm_imports() -> dict[str, list[int]]:
    """Per module of sa01/providers, the lines importing litellm."""
    scan = subprocess.run(
        [sys.executable, "-c", _SCAN, str(PROVIDERS)], capture_output=True, text=True, check=True
    )
    found: dict[str, list[int]] = json.loads(scan.stdout)
    return found


def test_no_provider_module_but_one_imports_litellm_or_sets_its_environment() -> None:
    imports = _litellm_imports()
    offenders = {name: lines for name, lines in imports.items() if name != "_litellm.py" and lines}
    setting_env = [
        path.name
        for path in PROVIDERS.glob("*.py")
        if path.name != "_litellm.py" and re.search(r"environ\b.*LITELLM_", path.read_text())
    ]

    assert offenders == {}
    assert setting_env == []
    assert imports["_litellm.py"]


async def test_litellm_is_loaded_once_quiet_and_without_callbacks() -> None:
    first = await _litellm.load_litellm()
    second = _litellm.import_litellm()

    assert first is second
    assert first.suppress_debug_info is True
    assert first.callbacks == [] and first.success_callback == [] == first.failure_callback
    for name in _litellm.LITELLM_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING
