"""The package's shape, read from its source: imports go one way, and each repeated block lives once.

Parses every module of ``medsynth`` with :mod:`ast` (nothing is imported), so it runs in a second.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medsynth"

#: Modules still over the size limit, each to be split by the architecture issue; none may join them.
STILL_TO_SPLIT: set[str] = set()
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every import of a ``medsynth`` module in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "medsynth":
                found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "medsynth"]
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for module, imported in _imports(name, path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in MODULES else module
            if target in MODULES and target != name:
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    edges = {"medsynth.cli": {"medsynth.fsutil"}, "medsynth.fsutil": {"medsynth.cli"}, "medsynth.envs": {"medsynth.cli"}}
    assert _cycles(edges) == [["medsynth.cli", "medsynth.fsutil"]]


def test_no_import_cycle_in_the_package():
    assert _cycles(_graph()) == []


def test_no_private_name_is_imported_from_another_module():
    private = [(name, module, imported) for name, path in MODULES.items()
               for module, imported in _imports(name, path)
               if imported is not None and imported.startswith("_") and module != name]
    assert private == []


def test_no_module_grows_beyond_the_limit():
    over = {name for name, path in MODULES.items() if len(path.read_text().splitlines()) > MAX_LINES}
    assert over <= STILL_TO_SPLIT, f"modules over {MAX_LINES} lines: {sorted(over - STILL_TO_SPLIT)}"


def _sources_matching(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return sorted(name for name, path in MODULES.items() if regex.search(path.read_text()))


@pytest.mark.parametrize(("what", "pattern", "home"), [
    ("classifier-free guidance", r"(\w+) \+ [\w.]*(guidance|scale)\w* \* \(\w+ - \1\)", "medsynth.generator.field"),
    ("signal handlers", r"signal\.signal\(", "medsynth.train.signals"),
    ("deep merges", r"def _?deep_(merge|update)\(", "medsynth.configmerge"),
    ("quarantine loops", r'except \w+[^\n]*\n(.*\n){0,4}.*status="quarantined"', "medsynth.cases"),
    ("channel means", r'in \w+\.values\(\) if .*n_reference', "medsynth.metrics.masks"),
    ("loss-curve writers", r"csv\.DictWriter\(", "medsynth.train.curve"),
])
def test_each_repeated_block_lives_in_one_module(what, pattern, home):
    assert _sources_matching(pattern) == [home], f"{what} written outside {home}"


def test_a_lazily_exported_function_named_like_its_submodule_is_the_function():
    """``medsynth.metrics.pretrained_fd`` is a function in a submodule of the same name: importing another name
    of that submodule first must not leave the submodule object where the function is expected."""
    import subprocess
    import sys

    code = ("from medsynth.metrics import clip_fd_slices\n"
            "from medsynth.metrics import pretrained_fd\n"
            "assert callable(pretrained_fd), type(pretrained_fd)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
