"""What each rule imports: the distributions its conda env must hold, found from the import graph.

A rule's script calls ``run_rule(snakemake, "<module>:<function>")``, which imports
``medsynth.tasks.<module>``. From there every ``import`` of this package is followed, at module level
and inside functions alike (a function-level import runs when the rule does), and the lazy exports of a
package (``_EXPORTS`` of :mod:`medsynth.metrics`) count as imports of their submodules. Imports a rule
can run without (under ``if TYPE_CHECKING:``, or in a ``try`` whose handler catches the failure) do not
count. The imports that
leave the package and the standard library are mapped to the installed distributions that provide
them. Torch-free: the code is read (``ast``), never imported. ``medsynth envs --check`` and
``tests/test_config.py`` compare the result with each family's env.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["RuleScript", "family_requirements", "imported_modules", "rule_scripts", "third_party"]

PACKAGE = "medsynth"
_RULE = re.compile(r"^(?:rule|checkpoint) (\w+):", re.M)
_CONDA = re.compile(r'conda:\s*\n\s*"\.\./envs/(\w+)\.yaml"')
_SCRIPT = re.compile(r'script:\s*\n\s*"\.\./scripts/(\w+)\.py"')
_TASK = re.compile(r'run_rule\(\s*snakemake\s*,\s*"(\w+):\w+"')


@dataclass(frozen=True)
class RuleScript:
    """One rule: its env family, its script, and the task module the script runs."""

    rule: str
    family: str
    script: Path
    task_module: str | None


def rule_scripts(repo: str | Path) -> list[RuleScript]:
    """Every rule of ``rules/*.smk`` with a ``conda:`` env and a ``script:`` (the others run no Python of ours)."""
    repo = Path(repo)
    found = []
    for smk in sorted((repo / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = [(m.start(), m.group(1)) for m in _RULE.finditer(text)] + [(len(text), "")]
        for (start, name), (end, _) in zip(starts, starts[1:]):
            block = text[start:end]
            conda, script = _CONDA.search(block), _SCRIPT.search(block)
            if conda and script:
                path = repo / "scripts" / f"{script.group(1)}.py"
                task = _TASK.search(path.read_text())
                found.append(RuleScript(name, conda.group(1), path,
                                        f"{PACKAGE}.tasks.{task.group(1)}" if task else None))
    return found


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _lazy_exports(tree: ast.Module) -> set[str]:
    """Submodule names of a package's ``_EXPORTS = {name: submodule}`` table."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                return {v.value for v in node.value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    return set()


_OPTIONAL = {"ImportError", "ModuleNotFoundError", "Exception"}


def _not_required(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import under ``if TYPE_CHECKING:``, or inside a ``try`` whose handler catches its failure
    (``ImportError``, ``ModuleNotFoundError``, ``Exception``): the rule runs without it."""
    child = node
    while child in parents:
        parent = parents[child]
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        if isinstance(parent, ast.Try) and child in parent.body:
            caught = {ast.unparse(h.type).split(".")[-1] for h in parent.handlers if h.type is not None}
            caught |= {n.strip("() ") for c in list(caught) for n in c.split(",")}
            if caught & _OPTIONAL or any(h.type is None for h in parent.handlers):
                return True
        child = parent
    return False


def _imports(path: Path, module: str, root: Path) -> set[str]:
    """Absolute names of the modules ``path`` (module ``module``) imports, anywhere in its code."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _not_required(node, parents):
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names.add(base)
        for alias in node.names:  # `from pkg import submodule`
            if base.split(".")[0] == PACKAGE and _module_file(root, f"{base}.{alias.name}"):
                names.add(f"{base}.{alias.name}")
    if is_package:
        names.update(f"{module}.{sub}" for sub in _lazy_exports(tree))
    return {n for n in names if n}


def imported_modules(roots: list[str], repo: str | Path) -> set[str]:
    """Every module reachable from ``roots`` (this package's modules followed, others collected)."""
    root = Path(repo)
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        if module.split(".")[0] != PACKAGE:
            continue
        parts = module.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b
        path = _module_file(root, module)
        if path is not None:
            stack.extend(_imports(path, module, root))
    return seen


def third_party(modules: set[str]) -> set[str]:
    """Top-level names of ``modules`` outside this package and the standard library."""
    tops = {m.split(".")[0] for m in modules}
    return {t for t in tops if t != PACKAGE and t not in sys.stdlib_module_names and t != "__future__"}


def family_requirements(repo: str | Path) -> dict[str, dict[str, set[str]]]:
    """Family -> distribution -> the rules that need it (through what their scripts import).

    A top-level module no installed distribution provides is listed under ``"?<module>"``."""
    providers = metadata.packages_distributions()
    out: dict[str, dict[str, set[str]]] = {}
    for rs in rule_scripts(repo):
        roots = [f"{PACKAGE}.tasks"] + ([rs.task_module] if rs.task_module else [])
        script_imports = _imports(rs.script, "__main__", Path(repo))
        modules = imported_modules(roots + sorted(script_imports), repo)
        for top in third_party(modules):
            for dist in providers.get(top, [f"?{top}"]):
                out.setdefault(rs.family, {}).setdefault(dist, set()).add(rs.rule)
    return out
