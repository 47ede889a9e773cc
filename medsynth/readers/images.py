"""The pictures of a case: the slice in each window (8-bit grey PNG) and its conditioning mask (RGBA PNG).

Slices are model-space images in [-1, 1]; CT is shown through radiology windows (level, width in HU,
``intensity.windows``), MR over its full normalised range. Both are oriented as radiologists view them
(:func:`medsynth.figures.radiological`). The PNGs carry no text chunks, so a file says nothing of its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medsynth.figures import radiological
from medsynth.preprocess.intensity import unit_window

__all__ = ["MASK_COLOURS", "FULL_RANGE", "display_values", "write_grey_png", "write_mask_png"]

#: colours of the condition channels (matplotlib's tab10, as in the report's figures)
MASK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
#: the one "window" of an MR slice: its whole normalised range
FULL_RANGE = "full range"


def display_values(image: np.ndarray, modality: str, window: Sequence[float] | None,
                   hu_range: Sequence[float]) -> np.ndarray:
    """A 2D model-space slice as display values in [0, 1]: the CT ``window`` (level, width), or the full range."""
    image = np.asarray(image, dtype=np.float32)
    if modality == "CT" and window is not None:
        return unit_window(image, float(window[0]), float(window[1]), (float(hu_range[0]), float(hu_range[1])))
    return np.clip((image + 1.0) / 2.0, 0.0, 1.0)


def write_grey_png(values: np.ndarray, path: str | Path) -> Path:
    """Display values in [0, 1] of a slice (RAS x, y) -> an 8-bit grey PNG in radiological orientation."""
    pixels = np.round(np.clip(radiological(np.asarray(values)), 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")
    return Path(path)


def write_mask_png(masks: np.ndarray, path: str | Path) -> Path:
    """Condition channels ``(C, H, W)`` (binary) -> an RGBA PNG: channel ``c`` in ``MASK_COLOURS[c % 10]``
    (a later channel over an earlier one), transparent outside every mask; oriented as :func:`write_grey_png`."""
    masks = np.asarray(masks) > 0
    rgba = np.zeros((*masks.shape[1:], 4), np.uint8)
    for c in range(masks.shape[0]):
        rgba[masks[c]] = (*MASK_COLOURS[c % len(MASK_COLOURS)], 255)
    shown = np.ascontiguousarray(np.transpose(rgba, (1, 0, 2))[::-1, ::-1])  # radiological(), per colour plane
    Image.fromarray(shown).save(path, format="PNG")
    return Path(path)
