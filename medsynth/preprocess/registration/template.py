"""The study grid (:func:`reference_grid`) and the iterative affine mean template (:func:`build_template`)."""

from __future__ import annotations

from typing import Sequence

import nibabel as nib
import numpy as np

from medsynth.io.volume import canonical

from .geometry import image_data
from .params import RegistrationParams
from .register import register_affine
from .transform import AffineTransform


def reference_grid(
    template: nib.Nifti1Image,
    spacing_mm: Sequence[float],
    size: Sequence[int],
) -> nib.Nifti1Image:
    """The study grid: ``template`` (closest-canonical orientation) resampled to ``spacing_mm`` on a
    grid of ``size`` voxels centred on the template's centre (i.e. resample, then centre crop/pad).

    Returns the resampled template (float32, padded with its minimum) carrying the grid's affine.
    """
    spacing = np.asarray([float(s) for s in spacing_mm], dtype=float)
    shape = np.asarray([int(s) for s in size])
    if spacing.shape != (3,) or shape.shape != (3,) or np.any(spacing <= 0) or np.any(shape < 1):
        raise ValueError(f"need 3 positive spacings and sizes, got {spacing_mm} and {size}")
    template = canonical(template)
    affine = np.asarray(template.affine, dtype=float)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    rotation = affine[:3, :3] / zooms[None, :]
    centre = affine @ np.array([*((np.asarray(template.shape[:3]) - 1) / 2.0), 1.0])
    grid = np.eye(4)
    grid[:3, :3] = rotation * spacing[None, :]
    grid[:3, 3] = centre[:3] - grid[:3, :3] @ ((shape - 1) / 2.0)
    target = _GridOnly(tuple(int(s) for s in shape), grid)
    return AffineTransform.identity().apply(template, target, "linear", dtype=np.float32)


class _GridOnly:
    """Minimal stand-in for a reference image: only ``shape`` and ``affine`` are read."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray) -> None:
        self.shape = shape
        self.affine = affine


def build_template(
    images: Sequence[nib.Nifti1Image],
    params: RegistrationParams | None = None,
    iterations: int = 2,
    spacing_mm: Sequence[float] | None = None,
    unbias: bool = True,
    start: str = "largest",
) -> nib.Nifti1Image:
    """Iterative affine mean template of ``images``.

    Start from the image of largest (``start="largest"``: the one covering the most anatomy, so
    that partial scans register into it) or median physical extent (resampled to ``spacing_mm`` if given, same
    extent), register every image to the current template, average the aligned images on the
    template grid (each voxel over the cases that cover it), repeat ``iterations`` times. With
    ``unbias`` each average is taken in the mean position/shape of the cases (every case is
    resampled through its transform composed with the inverse of the mean transform), so the
    template does not keep the pose of the starting image.
    """
    images = list(images)
    if not images:
        raise ValueError("build_template needs at least one image")
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    params = params or RegistrationParams.from_config()
    extents = [float(np.prod(np.asarray(im.shape[:3]) * np.linalg.norm(im.affine[:3, :3], axis=0))) for im in images]
    if start not in ("largest", "median"):
        raise ValueError(f"start must be 'largest' or 'median', got {start!r}")
    order = np.argsort(extents, kind="stable")
    start = int(order[-1] if start == "largest" else order[(len(images) - 1) // 2])
    template = canonical(images[start])
    if spacing_mm is not None:
        zooms = np.linalg.norm(template.affine[:3, :3], axis=0)
        extent = np.asarray(template.shape[:3]) * zooms
        size = np.maximum(1, np.round(extent / np.asarray(spacing_mm, dtype=float))).astype(int)
        template = reference_grid(template, spacing_mm, tuple(size))
    else:
        template = nib.Nifti1Image(image_data(template).astype(np.float32), template.affine)
    shape = template.shape[:3]
    fill = float(np.min(image_data(template)))
    for _ in range(iterations):
        transforms = [register_affine(im, template, params) for im in images]
        if unbias and len(images) > 1:
            mean_inv = np.linalg.inv(np.mean([t.matrix for t in transforms], axis=0))
            transforms = [AffineTransform(t.matrix @ mean_inv) for t in transforms]
        total = np.zeros(shape, np.float64)
        count = np.zeros(shape, np.float64)
        for im, tx in zip(images, transforms):
            warped = np.asarray(tx.apply(im, template, "linear").dataobj, dtype=np.float64)
            ones = nib.Nifti1Image(np.ones(im.shape[:3], np.uint8), im.affine)
            cover = np.asarray(tx.apply(ones, template, "nearest", default_value=0).dataobj) > 0
            total[cover] += warped[cover]
            count[cover] += 1
        mean = np.full(shape, fill, np.float32)
        np.divide(total, count, out=mean, where=count > 0, casting="unsafe")
        template = nib.Nifti1Image(mean, template.affine)
        template.header.set_xyzt_units("mm", "sec")
    return template
