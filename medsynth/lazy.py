"""Lazy package exports (PEP 562): a package names its public objects and the submodule of each, and a
name's submodule is imported on first use, so importing one submodule does not import the others'
dependencies."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` of ``package`` whose ``exports`` map public name -> submodule; when a
    submodule is imported, all its exported names are cached in the package's ``namespace`` (its
    ``globals()``). That also replaces the submodule object the import system binds under its own name
    when the submodule exports a function of that name (``metrics.pretrained_fd``), which would otherwise
    shadow the function for every later ``from package import name``."""
    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(f"{package}.{module}")
        namespace.update({n: getattr(loaded, n) for n, m in exports.items() if m == module})
        return namespace[name]

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_
