"""The dataset registry (config/datasets.yaml) and the datasets a study uses.

A study lists datasets by registry name, or as a mapping: ``{name: amos22}`` with keys that
override the registry entry, or a complete inline entry (typically ``kind: local`` pointing at the
user's own folder).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

#: Kinds of dataset source the download rule understands.
KINDS = ("example", "local", "http", "zenodo", "osf", "huggingface", "manual")


class RegistryError(ValueError):
    """A dataset is unknown or its registry entry is incomplete."""


def load_registry(path: str | Path) -> dict[str, dict]:
    """Read the registry YAML: a mapping from dataset name to its entry."""
    with open(path) as f:
        registry = yaml.safe_load(f) or {}
    if not isinstance(registry, dict):
        raise RegistryError(f"{path}: expected a mapping of dataset names to entries")
    return registry


def resolve_datasets(study_datasets: list, registry: dict[str, dict]) -> dict[str, dict]:
    """The study's datasets as complete entries, keyed by name (in the order the study lists them)."""
    resolved: dict[str, dict] = {}
    for item in study_datasets:
        if isinstance(item, str):
            item = {"name": item}
        name = item.get("name")
        if not name:
            raise RegistryError(f"dataset entry without a name: {item}")
        entry = copy.deepcopy(registry.get(name, {}))
        entry.update(copy.deepcopy({k: v for k, v in item.items() if k != "name"}))
        if not entry:
            raise RegistryError(f"dataset {name!r} is not in the registry and has no inline definition")
        kind = entry.get("kind")
        if kind not in KINDS:
            raise RegistryError(f"dataset {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if kind in ("example", "local", "manual") and not entry.get("root"):
            raise RegistryError(f"dataset {name!r} (kind {kind}) needs 'root': the folder that holds its files")
        entry["name"] = name
        resolved[name] = entry
    return resolved


def dataset_root(entry: dict, raw_dir: str | Path, base_dir: str | Path = ".") -> Path:
    """Folder that holds the dataset's files once fetched.

    Shipped, local and manually downloaded datasets are read where they are (``root``, relative
    to ``base_dir``, the workflow folder); downloaded ones live under ``raw_dir/<name>/files``.
    """
    if entry["kind"] in ("example", "local", "manual"):
        root = Path(entry["root"]).expanduser()
        return root if root.is_absolute() else Path(base_dir) / root
    return Path(raw_dir) / entry["name"] / "files"
