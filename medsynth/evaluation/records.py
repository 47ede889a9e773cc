"""What every metrics record shares: the pixel / voxel spacing of the training sets and the JSON writer."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medsynth.fsutil import write_text_atomic

__all__ = ["clean_json", "finite_or_none", "pixel_spacing", "voxel_spacing", "write_metrics_json"]


def pixel_spacing(grid_cfg: Mapping, slice_size: int) -> list[float]:
    """In-plane spacing (mm) of the 2D slices: the registration grid's x/y extent over the slice size."""
    spacing, size = grid_cfg["spacing_mm"], grid_cfg["size"]
    return [float(spacing[i]) * float(size[i]) / float(slice_size) for i in (0, 1)]


def voxel_spacing(grid_cfg: Mapping, volume_size: Sequence[int]) -> list[float]:
    """Voxel spacing (mm) of the 3D training volumes: the registration grid's extent over the volume size."""
    spacing, size = grid_cfg["spacing_mm"], grid_cfg["size"]
    return [float(spacing[i]) * float(size[i]) / float(volume_size[i]) for i in range(len(volume_size))]


def finite_or_none(value):
    """JSON-safe float (NaN / inf -> None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def clean_json(obj):
    """``obj`` with JSON-safe numbers (numpy scalars as Python numbers, NaN / inf as None)."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_metrics_json(path: str | Path, payload: Mapping) -> None:
    """``payload`` as sorted, indented JSON at ``path`` (atomically)."""
    write_text_atomic(path, json.dumps(clean_json(payload), indent=2, sort_keys=True) + "\n")
