"""CT radiology windows on model-space images.

Model space: CT slices / volumes in [-1, 1], mapped linearly to HU by ``intensity.ct_hu_range``
(default [-1024, 1024]). A window ``[level, width]`` (``intensity.windows``, e.g. lung [-600, 1500],
soft_tissue [50, 350]) maps ``level - width / 2`` to 0 and ``level + width / 2`` to 1, clipped.
Windowed images are what the Fréchet distances of :mod:`medsynth.metrics.frechet` see (MedSyn2
Table 1: FID per CT window; MAISI's 2.5D FID is computed the same way on each plane).
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np
import torch

__all__ = ["model_to_hu", "apply_window", "windowed"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _range(hu_range: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in hu_range)
    if not hi > lo:
        raise ValueError(f"hu_range must be increasing, got {list(hu_range)}")
    return lo, hi


def model_to_hu(x: ArrayT, hu_range: Sequence[float]) -> ArrayT:
    """Model units [-1, 1] -> HU: -1 -> ``hu_range[0]``, 1 -> ``hu_range[1]`` (linear, not clipped)."""
    lo, hi = _range(hu_range)
    return (x + 1.0) * ((hi - lo) / 2.0) + lo


def apply_window(hu: ArrayT, level: float, width: float) -> ArrayT:
    """HU -> [0, 1] for window ``(level, width)``: ``level - width/2`` -> 0, ``level + width/2`` -> 1, clipped."""
    level, width = float(level), float(width)
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    y = (hu - (level - width / 2.0)) / width
    if isinstance(y, torch.Tensor):
        return y.clamp(0.0, 1.0)
    return np.clip(y, 0.0, 1.0)


def windowed(x_model: ArrayT, hu_range: Sequence[float], level: float, width: float) -> ArrayT:
    """:func:`apply_window` of :func:`model_to_hu`: model-space CT -> window display values in [0, 1]."""
    return apply_window(model_to_hu(x_model, hu_range), level, width)
