"""Geometry helpers: nibabel (RAS) <-> SimpleITK (LPS) images, the metric copy, centre of mass, translation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medsynth.io.volume import LPS_TO_RAS

FLIP = LPS_TO_RAS  # its own inverse


def lps_geometry(affine: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """(spacing, origin, direction) in LPS of a RAS affine (as ``nifti_to_sitk`` computes them)."""
    affine_lps = FLIP @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing[None, :]
    return spacing.tolist(), affine_lps[:3, 3].tolist(), direction.flatten().tolist()


def sitk_from_array(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image (LPS) of an (x, y, z) array with a RAS affine."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    spacing, origin, direction = lps_geometry(affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def sitk_grid(reference: nib.Nifti1Image) -> sitk.Image:
    """A small-typed SimpleITK image with the reference's grid (its data is not read)."""
    shape = [int(s) for s in reference.shape[:3]]
    img = sitk.Image(shape, sitk.sitkUInt8)
    spacing, origin, direction = lps_geometry(reference.affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def image_data(image: nib.Nifti1Image) -> np.ndarray:
    """The data of a 3D image as an array (an error for any other dimensionality)."""
    data = np.asanyarray(image.dataobj)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    return np.asarray(data)


def metric_image(data: np.ndarray, intensity_range: tuple[float, float] | None) -> np.ndarray:
    """The float32 copy the metric sees: clipped to ``intensity_range`` and shifted to start at 0."""
    arr = np.asarray(data, dtype=np.float32)
    if intensity_range is not None:
        lo, hi = intensity_range
        arr = np.clip(arr, lo, hi)
        arr -= np.float32(lo)
    else:
        arr = arr - np.float32(np.nanmin(arr))
    return np.nan_to_num(arr, copy=False)


def center_of_mass_ras(weights: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre of mass (RAS mm) of a non-negative (x, y, z) array."""
    total = float(weights.sum(dtype=np.float64))
    if not total > 0:
        raise ValueError("cannot initialise by centre of mass: the metric image is empty")
    idx = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        profile = weights.sum(axis=other, dtype=np.float64)
        idx.append(float(np.dot(profile, np.arange(weights.shape[axis]))) / total)
    return (np.asarray(affine, dtype=float) @ np.array([*idx, 1.0]))[:3]


def translation(offset: np.ndarray) -> np.ndarray:
    """4x4 matrix of the translation by ``offset``."""
    m = np.eye(4)
    m[:3, 3] = offset
    return m
