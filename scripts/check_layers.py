"""The import-layer check of ``make test``: no import cycle, no upward import.

Reads the contract from ``[tool.sa01.layers]`` in pyproject.toml:

* ``layers``: the project's packages from the top down; a layer may import only the
  layers below it. Packages written on one line joined by ``|`` are independent
  siblings: neither may import the other.
* ``tools``: packages outside the layers (demo, bench, the loopback servers); they may
  import anything, and no layered package may import them.
* ``exceptions``: ``"importer -> imported"`` module pairs allowed for now, each one a
  known debt with its reason written beside it in pyproject.toml.

Every ``import`` counts for the layers, at module level, inside a function or under
``TYPE_CHECKING``: a deferred import still ties the two modules together. An import
cycle between modules (of any size, inside one package or across several) fails the
check, counting every import but those under ``TYPE_CHECKING`` (which run nothing),
as does an import that goes up or sideways between layers. Only the standard
library is used, so the check runs before anything is installed.

Usage: ``python scripts/check_layers.py [--root DIR]``; exit 0 when the contract
holds, 1 with one line per violation otherwise.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Contract", "Graph", "check", "load_contract", "main", "scan"]


@dataclass(frozen=True)
class Contract:
    """The layers from the top down (each a tuple of independent packages)."""

    layers: tuple[tuple[str, ...], ...]
    tools: tuple[str, ...] = ()
    exceptions: frozenset[tuple[str, str]] = frozenset()

    def rank(self, package: str) -> int | None:
        """0 for the top layer; None for a package outside the layers."""
        for index, layer in enumerate(self.layers):
            if package in layer:
                return index
        return None

    @property
    def packages(self) -> tuple[str, ...]:
        """Every package the check reads (dotted names: ``sa01.core``)."""
        return tuple(p for layer in self.layers for p in layer) + self.tools

    def package_of(self, module: str) -> str | None:
        """The package of the contract that holds ``module`` (the longest that does)."""
        found = [p for p in self.packages if module == p or module.startswith(p + ".")]
        return max(found, key=len) if found else None


@dataclass
class Graph:
    """Module -> imported project modules, with the line of each import."""

    modules: set[str] = field(default_factory=set)
    edges: dict[str, dict[str, int]] = field(default_factory=dict)
    typing_only: set[tuple[str, str]] = field(default_factory=set)
    files: dict[str, Path] = field(default_factory=dict)

    def add(self, importer: str, imported: str, line: int, typing_only: bool = False) -> None:
        """Record ``importer`` importing ``imported`` at ``line`` (the first line wins);
        an edge is typing-only while every import along it is."""
        if importer == imported:
            return
        targets = self.edges.setdefault(importer, {})
        if imported not in targets:
            targets[imported] = line
            if typing_only:
                self.typing_only.add((importer, imported))
        elif not typing_only:
            self.typing_only.discard((importer, imported))


def load_contract(pyproject: Path) -> Contract:
    """The contract in ``[tool.sa01.layers]`` of ``pyproject``."""
    table = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["sa01"]["layers"]
    layers = tuple(
        tuple(part.strip() for part in line.split("|") if part.strip()) for line in table["layers"]
    )
    exceptions: set[tuple[str, str]] = set()
    for pair in table.get("exceptions", []):
        importer, sep, imported = (part.strip() for part in pair.partition("->"))
        if not sep or not importer or not imported:
            raise ValueError(f"exception {pair!r} is not 'importer -> imported'")
        exceptions.add((importer, imported))
    return Contract(layers, tuple(table.get("tools", [])), frozenset(exceptions))


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    node: ast.AST, module: str, is_package: bool, typing_only: bool = False
) -> Iterator[tuple[str, int, bool]]:
    """Every absolute name imported under ``node``, with its line and whether it is
    imported for type checking only (under ``if TYPE_CHECKING:``); ``from x import y``
    as ``x.y`` (the scan takes the longest project module of a name: ``x.y`` or ``x``)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, node.lineno, typing_only
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            prefix = ".".join([*base, node.module] if node.module else base)
        else:
            prefix = node.module or ""
        for alias in node.names:
            yield f"{prefix}.{alias.name}", node.lineno, typing_only
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for statement in node.body:
            yield from _imports(statement, module, is_package, True)
        for statement in node.orelse:
            yield from _imports(statement, module, is_package, typing_only)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _imports(child, module, is_package, typing_only)


def scan(root: Path, packages: Iterable[str]) -> Graph:
    """The import graph of every module under ``packages`` in ``root``."""
    graph = Graph()
    sources: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
            name = _module_name(root, path)
            sources[name] = (path, path.name == "__init__.py")
    graph.modules = set(sources)
    for name, (path, is_package) in sources.items():
        graph.files[name] = path
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for imported, line, typing_only in _imports(tree, name, is_package):
            # The longest project module the name denotes (``from x import y`` names
            # the module ``x.y`` when there is one, else an attribute of ``x``).
            target = imported
            while target and target not in graph.modules:
                target = target.rpartition(".")[0]
            if target:
                graph.add(name, target, line, typing_only)
    return graph


def _cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph.edges.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def check(graph: Graph, contract: Contract, root: Path) -> tuple[list[str], set[tuple[str, str]]]:
    """The violations (one line each) and the exceptions that were used."""
    violations: list[str] = []
    used: set[tuple[str, str]] = set()
    # Cycles are about what runs at import: an import for type checking only is left
    # out of them (it still counts for the layers: it is a dependency all the same).
    runtime = Graph(modules=set(graph.modules), files=graph.files)
    for importer, targets in sorted(graph.edges.items()):
        for imported, line in sorted(targets.items()):
            if (importer, imported) in contract.exceptions:
                used.add((importer, imported))
                continue
            if (importer, imported) not in graph.typing_only:
                runtime.add(importer, imported, line)
            source, target = contract.package_of(importer), contract.package_of(imported)
            if source is None or target is None or source == target:
                continue
            if source in contract.tools:
                continue
            where = f"{graph.files[importer].relative_to(root)}:{line}"
            if target in contract.tools:
                violations.append(f"{where}: {importer} imports the tool {imported}")
                continue
            high, low = contract.rank(source), contract.rank(target)
            if high is None or low is None:
                continue
            if high == low:
                violations.append(
                    f"{where}: {importer} imports {imported} "
                    f"({source} and {target} are independent siblings)"
                )
            elif high > low:
                violations.append(
                    f"{where}: {importer} imports {imported} ({source} is below {target})"
                )
    for component in _cycles(runtime):
        violations.append(f"import cycle: {' <-> '.join(component)}")
    return violations, used


def main(argv: list[str] | None = None) -> int:
    """Check the contract of ``<root>/pyproject.toml`` against the code under ``root``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    root: Path = args.root
    contract = load_contract(root / "pyproject.toml")
    graph = scan(root, contract.packages)
    violations, used = check(graph, contract, root)
    stale = sorted(contract.exceptions - used)
    for importer, imported in stale:
        violations.append(f"stale exception (no such import any more): {importer} -> {imported}")
    for line in violations:
        print(line, file=sys.stderr)
    if violations:
        print(f"import layers: {len(violations)} violation(s)", file=sys.stderr)
        return 1
    print(
        f"import layers: {len(graph.modules)} modules, no cycle, no upward import "
        f"({len(used)} temporary exception(s) in pyproject.toml)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
