"""The import-layer check (scripts/check_layers.py): the project holds its contract, and
the check fails on an upward import, a sideways one, a cycle and a stale exception."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts/check_layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module
    spec.loader.exec_module(module)
    return module


check_layers = _load()

CONTRACT = """
[tool.sa01.layers]
layers = ["top", "middle | side", "bottom"]
tools = ["tool"]
exceptions = [{exceptions}]
"""


def tree(tmp_path: Path, files: dict[str, str], exceptions: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pyproject.toml").write_text(CONTRACT.format(exceptions=exceptions))
    for package in ("top", "middle", "side", "bottom", "tool"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def run(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = check_layers.main(["--root", str(root)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_project_holds_its_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run(ROOT, capsys)
    assert code == 0, output
    assert "no cycle, no upward import" in output


def test_downward_imports_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(
        tmp_path,
        {
            "top/a.py": "from middle.b import x\nimport bottom.c\n",
            "middle/b.py": "from bottom import c\nx = 1\n",
            "bottom/c.py": "",
            "tool/t.py": "import top.a\n",
        },
    )
    assert run(root, capsys)[0] == 0


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"bottom/c.py": "def f() -> None:\n    from top import a\n", "top/a.py": ""},
            "bottom.c imports top.a (bottom is below top)",
        ),
        (
            {"middle/b.py": "from side.s import y\n", "side/s.py": "y = 1\n"},
            "middle.b imports side.s (middle and side are independent siblings)",
        ),
        (
            {"top/a.py": "from tool import t\n", "tool/t.py": ""},
            "top.a imports the tool tool.t",
        ),
        (
            {
                "middle/b.py": "from middle import d\n",
                "middle/d.py": "def f() -> None:\n    import middle.b\n",
            },
            "import cycle: middle.b <-> middle.d",
        ),
    ],
    ids=["upward", "sideways", "tool", "cycle"],
)
def test_a_broken_rule_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str], expected: str
) -> None:
    code, output = run(tree(tmp_path, files), capsys)
    assert code == 1
    assert expected in output


def test_an_import_for_type_checking_only_makes_no_cycle_but_still_counts_for_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typing_cycle = {
        "top/a.py": "from top import b\n",
        "top/b.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from top.a import X\n"
        ),
    }
    assert run(tree(tmp_path / "one", typing_cycle), capsys)[0] == 0
    upward = {
        "bottom/c.py": "import typing\nif typing.TYPE_CHECKING:\n    from top.a import X\n",
        "top/a.py": "",
    }
    code, output = run(tree(tmp_path / "two", upward), capsys)
    assert code == 1 and "bottom.c imports top.a" in output


def test_an_exception_allows_its_import_and_a_stale_one_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"bottom/c.py": "from top import a\n", "top/a.py": ""}
    allowed = tree(tmp_path / "one", files, '"bottom.c -> top.a"')
    assert run(allowed, capsys)[0] == 0
    stale = tree(tmp_path / "two", {"top/a.py": ""}, '"bottom.c -> top.a"')
    code, output = run(stale, capsys)
    assert code == 1 and "stale exception" in output


def test_a_layer_can_be_a_subpackage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.sa01.layers]\nlayers = ["app", "ns.high", "ns.low"]\n'
    )
    for package in ("app", "ns", "ns/high", "ns/low"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "app/main.py").write_text("from ns.high import h\n")
    (tmp_path / "ns/high/h.py").write_text("from ns.low.l import x\n")
    (tmp_path / "ns/low/l.py").write_text("x = 1\n")
    assert run(tmp_path, capsys)[0] == 0
    (tmp_path / "ns/low/l.py").write_text("from ns.high import h\nx = 1\n")
    code, output = run(tmp_path, capsys)
    assert code == 1 and "ns.low.l imports ns.high.h (ns.low is below ns.high)" in output
