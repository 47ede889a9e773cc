"""Where a fetched model lives, and the error that names the command to fetch a missing one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["WeightsMissing", "files_path", "inventory_path", "model_files", "source_path"]


class WeightsMissing(FileNotFoundError):
    """A pretrained model is not (completely) in the weights folder."""


def files_path(weights_dir: str | Path, name: str) -> Path:
    """The folder holding model ``name``'s files."""
    return Path(weights_dir) / name / "files"


def inventory_path(weights_dir: str | Path, name: str) -> Path:
    """The weights rule's inventory of model ``name`` (the file rules take as input)."""
    return Path(weights_dir) / name / "inventory.csv"


def source_path(weights_dir: str | Path, name: str) -> Path:
    """Where model ``name`` came from (``source.json``)."""
    return Path(weights_dir) / name / "source.json"


def _how(entry: dict | None) -> str:
    if not entry:
        return ""
    if entry.get("access") == "gated":
        env = (entry.get("auth") or {}).get("env", "HF_TOKEN")
        page = f"https://huggingface.co/{entry['repo_id']}" if entry.get("repo_id") else "its page"
        return f" It is gated: accept its licence at {page}, then export {env}=<your token> before fetching."
    if entry.get("access") == "manual":
        return f" It is fetched by hand: {' '.join(str(entry.get('instructions', '')).split())}"
    return ""


def model_files(name: str, weights_dir: str | Path, entry: dict | None = None) -> Path:
    """The local folder of model ``name``, checked against its inventory; ``WeightsMissing`` names the fix."""
    inventory = inventory_path(weights_dir, name)
    fetch = f"snakemake --cores 1 {inventory}"
    if not inventory.is_file():
        raise WeightsMissing(f"pretrained model {name!r} (config/models.yaml) is not in {weights_dir}; fetch it "
                             f"where there is internet with `{fetch}`.{_how(entry)}")
    files = pd.read_csv(inventory, dtype={"path": str})
    root = files_path(weights_dir, name)
    for rel, size in zip(files["path"], files["bytes"]):
        path = root / rel
        if not path.is_file() or path.stat().st_size != int(size):
            raise WeightsMissing(f"pretrained model {name!r}: {path} is missing or changed since it was fetched; "
                                 f"fetch it again with `{fetch} --forcerun weights`.{_how(entry)}")
    return root
