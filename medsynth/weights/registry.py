"""The model registry (``config/models.yaml``): one entry per pretrained network, checked when read.

An entry names its source (``kind``: ``huggingface`` repo + revision, ``http`` files with URLs, or
``manual`` steps), its ``access`` (public / gated / manual), licence, size, who uses it, and
optionally the sha256 of files (``sha256: {path: hex}``), which the weights rule verifies.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

__all__ = ["ACCESS", "KINDS", "ModelRegistryError", "load_models", "markdown_table", "model_entry"]

#: Sources the weights rule can fetch from.
KINDS = ("huggingface", "http", "manual")
#: How a person obtains the model.
ACCESS = ("public", "gated", "manual")
_REQUIRED = {"huggingface": ("repo_id",), "http": ("files",), "manual": ("instructions", "expect")}


class ModelRegistryError(ValueError):
    """A model is unknown or its registry entry is incomplete."""


def _check(name: str, entry: dict) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
        raise ModelRegistryError(f"model name {name!r}: use letters, digits, '_' and '-' only (it is a folder name)")
    kind, access = entry.get("kind"), entry.get("access")
    if kind not in KINDS:
        raise ModelRegistryError(f"model {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if access not in ACCESS:
        raise ModelRegistryError(f"model {name!r}: access {access!r} is not one of {', '.join(ACCESS)}")
    missing = [key for key in (*_REQUIRED[kind], "licence", "title") if not entry.get(key)]
    if missing:
        raise ModelRegistryError(f"model {name!r} (kind {kind}) lacks {', '.join(missing)}")
    if access == "gated" and not (entry.get("auth") or {}).get("env"):
        raise ModelRegistryError(f"model {name!r} is gated but names no token variable (auth.env)")
    for item in entry.get("files") or []:
        if kind == "http" and not (item.get("url") and item.get("path")):
            raise ModelRegistryError(f"model {name!r}: every http file needs 'path' and 'url' ({item})")


def load_models(path: str | Path) -> dict[str, dict]:
    """Read and check the registry: model name -> entry (with ``name`` filled in)."""
    with open(path) as f:
        registry = yaml.safe_load(f) or {}
    if not isinstance(registry, dict):
        raise ModelRegistryError(f"{path}: expected a mapping of model names to entries")
    out = {}
    for name, entry in registry.items():
        if not isinstance(entry, dict):
            raise ModelRegistryError(f"{path}: model {name!r} is not a mapping")
        _check(name, entry)
        out[name] = {**copy.deepcopy(entry), "name": name}
    return out


def model_entry(registry: dict[str, dict], name: str, overrides: dict | None = None) -> dict:
    """The entry of ``name``, with a study's ``overrides`` (e.g. a pinned ``revision``, an ``endpoint``)."""
    if name not in registry:
        raise ModelRegistryError(f"model {name!r} is not in the model registry (known: {', '.join(sorted(registry))})")
    entry = {**copy.deepcopy(registry[name]), **copy.deepcopy(overrides or {})}
    _check(name, entry)
    return entry


def markdown_table(registry: dict[str, dict], weights_dir: str = "resources/weights") -> str:
    """The README's table of every registered model (what uses it, size, licence, access, the command)."""
    rows = ["| model | what | used by | size | licence | access | fetch |", "|---|---|---|---|---|---|---|"]
    for name, entry in registry.items():
        source = entry.get("repo_id") or ", ".join(f["path"] for f in entry.get("files") or []) or "by hand"
        access = entry["access"] + (f" (`{entry['auth']['env']}`)" if entry["access"] == "gated" else "")
        rows.append(f"| `{name}` | {entry['title']} [{source}] | {'; '.join(entry['used_by'])} | "
                    f"{entry['size_gb']} GB | {entry['licence']} | {access} | "
                    f"`snakemake --cores 1 {weights_dir}/{name}/inventory.csv` |")
    return "\n".join(rows) + "\n"
