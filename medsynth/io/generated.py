"""The file format of a generated set (rule ``sample``'s ``.safetensors``), for its writer and every reader.

``image`` float32 ``(N, 1, *spatial)`` in [-1, 1], ``masks`` uint8 ``(N, C, *spatial)`` (the conditioning
masks at image resolution) and the metadata key ``medsynth``: ``{"conditions": [...], "run": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsynth.fsutil import atomic_path

__all__ = ["write_generated", "load_generated"]


def write_generated(path: str | Path, images: np.ndarray, masks: np.ndarray, conditions: Sequence[str], run: str) -> None:
    """Write a generated set atomically (``masks`` boolean or 0/1)."""
    from safetensors.numpy import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({"image": np.ascontiguousarray(images),
                   "masks": np.ascontiguousarray(np.asarray(masks).astype(np.uint8))}, str(tmp),
                  metadata={"medsynth": json.dumps({"conditions": list(conditions), "run": run})})


def load_generated(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images (N, 1, *spatial) in [-1, 1], masks (N, C, *spatial) uint8, condition names)`` of a sampled set."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="np") as fh:
        meta = json.loads((fh.metadata() or {}).get("medsynth", "{}"))
    return tensors["image"], tensors["masks"], list(meta.get("conditions", []))
