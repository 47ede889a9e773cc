"""2D image files (PNG, JPEG, BMP, TIFF) as one-slice volumes.

MedDiff-FT's benchmarks (dermoscopy photographs, ultrasound frames) and MedSyn2's SemiSeg slices are 2D
pictures with binary lesion masks. The pipeline reads them as volumes of one axial slice so that every
later stage (case table, QC, masks, training slices) treats them as it treats scans: voxel ``(x, y, 0)``
with ``x`` along the picture's columns and ``y`` up its rows, so that the pipeline's radiological view
(:func:`medsynth.figures.radiological`) shows the picture as stored. Pixel spacing is a setting (pictures
carry none the pipeline trusts); the slice is 1 unit thick.

Colour pictures become grey by ITU-R 601-2 luma (Pillow's ``convert("L")``): the pipeline's models take
one channel. Grey 8- and 16-bit pictures keep their values. A mask becomes a binary label map: pixels
above a threshold are label 1 (masks saved as JPEG carry compression noise around 0 and 255); without a
threshold its values are label ids (multi-class masks).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

#: the ``source_kind`` of a picture case in the sources table and the manifest
PICTURE = "image2d"
#: file types read as 2D pictures (matched case-insensitively)
IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Pillow modes kept as they are (grey, 16-bit, 32-bit integer or float); any other is converted to luma
_GREY_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "F")


def is_image2d_file(path: str | os.PathLike) -> bool:
    """True for the picture formats :func:`read_image2d` reads."""
    return str(path).lower().endswith(IMAGE2D_SUFFIXES)


def _opened(path: str | os.PathLike):
    """The picture, decoded (a truncated or corrupt file fails here, not later); one frame only."""
    from PIL import Image

    picture = Image.open(path)
    try:
        picture.load()
        if getattr(picture, "n_frames", 1) > 1:
            raise ValueError(f"{Path(path).name} holds {picture.n_frames} frames; one picture per file is read")
    except BaseException:
        picture.close()
        raise
    return picture


def _grey(picture) -> np.ndarray:
    """An opened picture's pixels (rows, columns): colour -> luma (uint8), grey values as stored."""
    return np.asarray(picture if picture.mode in _GREY_MODES else picture.convert("L"))


def picture_array(path: str | os.PathLike) -> np.ndarray:
    """The picture's pixels as a (rows, columns) array: colour -> luma (uint8), grey values as stored."""
    with _opened(path) as picture:
        return _grey(picture)


def as_volume(pixels: np.ndarray, spacing_mm: float) -> nib.Nifti1Image:
    """A (rows, columns) array as a one-slice RAS volume (x: columns, y: rows bottom-up) of the given spacing."""
    data = np.ascontiguousarray(pixels[::-1, ::-1].T)[:, :, None]
    affine = np.diag([float(spacing_mm), float(spacing_mm), 1.0, 1.0])
    return nib.Nifti1Image(data, affine)


def read_image2d(path: str | os.PathLike, spacing_mm: float = 1.0) -> nib.Nifti1Image:
    """A picture file as a one-slice volume (float32 for float pictures, else its integer type)."""
    return as_volume(picture_array(path), spacing_mm)


def mask_array(path: str | os.PathLike, threshold: float | None) -> np.ndarray:
    """A mask picture's label ids (rows, columns): grey values above ``threshold`` -> 1, else 0 (``threshold``
    None: the values are the ids). A palette picture's ids are its palette indices (label PNGs store classes
    so): index > 0 -> 1 under a threshold; a 1-bit picture is 0 / 1."""
    with _opened(path) as picture:
        if picture.mode in ("P", "1"):
            ids = np.asarray(picture).astype(np.int64)
            return ids if threshold is None else (ids > 0).astype(np.int64)
        pixels = _grey(picture)
    return pixels if threshold is None else (pixels > threshold).astype(np.int64)


def read_mask2d(path: str | os.PathLike, threshold: float | None, spacing_mm: float = 1.0) -> nib.Nifti1Image:
    """A mask picture as a one-slice label map (int16; :func:`mask_array`)."""
    return as_volume(mask_array(path, threshold).astype(np.int16), spacing_mm)
