"""Intensity normalisation and radiology windows, with exact inverses.

CT: HU clipped to a configured range and scaled linearly to [-1, 1] (MedSyn2: [-1024, 1024];
MAISI: [-1000, 1000]); ``unit_to_hu`` maps generated images back to HU. Windows (level, width) map
[level - width/2, level + width/2] to [0, 1] (MedSyn2 Supp. 7.1.5: lung (-600, 1500), vessel
(100, 700), soft tissue (50, 350), bone (300, 2000)). MR: percentile normalisation; the two
percentile values of each case are kept so the mapping can be undone. 2D pictures (any other modality,
e.g. dermoscopy, ultrasound): a fixed value range, 8-bit [0, 255] by default, scaled linearly to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def hu_to_unit(hu: np.ndarray, hu_range: tuple[float, float] = (-1024.0, 1024.0)) -> np.ndarray:
    """Clip HU to ``hu_range`` and scale linearly to [-1, 1] (float32)."""
    lo, hi = hu_range
    clipped = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    return (2.0 * (clipped - lo) / (hi - lo) - 1.0).astype(np.float32)


def unit_to_hu(x: np.ndarray, hu_range: tuple[float, float] = (-1024.0, 1024.0)) -> np.ndarray:
    """Inverse of ``hu_to_unit`` on [-1, 1] (values outside are clipped first)."""
    lo, hi = hu_range
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    return ((x + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


def hu_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Radiology window: ``level - width/2`` -> 0, ``level + width/2`` -> 1, clipped (float32)."""
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0).astype(np.float32)


def unit_window(x: np.ndarray, level: float, width: float, hu_range: tuple[float, float] = (-1024.0, 1024.0)) -> np.ndarray:
    """Window applied to an image already in [-1, 1] model units (e.g. a generated sample)."""
    return hu_window(unit_to_hu(x, hu_range), level, width)


@dataclass(frozen=True)
class PercentileScale:
    """MR normalisation of one case: its ``low``/``high`` percentile values map to -1/+1."""

    low: float
    high: float

    @classmethod
    def fit(cls, data: np.ndarray, percentiles: tuple[float, float] = (0.0, 99.5), mask: np.ndarray | None = None) -> "PercentileScale":
        """Percentile values of ``data`` (inside ``mask`` when given)."""
        values = np.asarray(data, dtype=np.float32)
        values = values[mask] if mask is not None else values.ravel()
        low, high = np.percentile(values, percentiles)
        if high <= low:
            raise ValueError(f"percentiles {percentiles} give an empty range ({low} >= {high})")
        return cls(float(low), float(high))

    def forward(self, data: np.ndarray) -> np.ndarray:
        """Scale to [-1, 1], clipping outside the percentile range (float32)."""
        clipped = np.clip(np.asarray(data, dtype=np.float32), self.low, self.high)
        return (2.0 * (clipped - self.low) / (self.high - self.low) - 1.0).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Back to the case's original units."""
        x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
        return ((x + 1.0) / 2.0 * (self.high - self.low) + self.low).astype(np.float32)


def normalise(data: np.ndarray, modality: str, cfg: dict) -> tuple[np.ndarray, dict]:
    """Model-space image in [-1, 1] and the parameters that undo it (from the ``intensity`` config section:
    ``ct_hu_range`` for CT, ``mr_percentiles`` for MR, ``picture_range`` for any other modality: 2D pictures)."""
    if modality == "CT":
        hu_range = tuple(cfg["ct_hu_range"])
        return hu_to_unit(data, hu_range), {"kind": "ct", "hu_range": list(hu_range)}
    if modality != "MR":  # a 2D picture's modality: one fixed range for every case
        value_range = tuple(cfg["picture_range"])
        return hu_to_unit(data, value_range), {"kind": "picture", "range": list(value_range)}
    scale = PercentileScale.fit(data, tuple(cfg["mr_percentiles"]))
    return scale.forward(data), {"kind": "mr", "low": scale.low, "high": scale.high}


def denormalise(x: np.ndarray, params: dict) -> np.ndarray:
    """Inverse of ``normalise`` given its parameters (HU for CT, original units for MR)."""
    if params["kind"] == "ct":
        return unit_to_hu(x, tuple(params["hu_range"]))
    if params["kind"] == "picture":
        return unit_to_hu(x, tuple(params["range"]))
    return PercentileScale(params["low"], params["high"]).inverse(x)
