"""Quality control of canonical volumes: each check returns a one-line reason or nothing.

The thresholds come from the ``ingest.qc`` section of the study config (see config/schema.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class QCThresholds:
    """Limits a volume must respect to enter the study (``ingest.qc``; defaults in the schema)."""

    min_slices: int
    spacing_mm: tuple[float, float]
    ct_value_range: tuple[float, float]
    ct_air_percentile: float
    ct_air_max_hu: float

    @classmethod
    def from_config(cls, cfg: dict | None = None) -> "QCThresholds":
        """Build from the ``ingest.qc`` config section (keys left out take the schema's defaults)."""
        from medsynth.settings import section

        c = section("ingest", {"qc": dict(cfg or {})})["qc"]
        return cls(
            min_slices=int(c["min_slices"]),
            spacing_mm=tuple(c["spacing_mm"]),
            ct_value_range=tuple(c["ct_value_range"]),
            ct_air_percentile=float(c["ct_air_percentile"]),
            ct_air_max_hu=float(c["ct_air_max_hu"]),
        )


def voxel_spacing(image: nib.Nifti1Image) -> np.ndarray:
    """Voxel spacing in mm along the three array axes (from the affine)."""
    return np.linalg.norm(image.affine[:3, :3], axis=0)


def _pixdim_problem(axis: int, value: float) -> str | None:
    """What is wrong with one stored ``pixdim[axis]`` (a voxel size must be positive and finite), or nothing."""
    if not np.isfinite(value):
        return f"pixdim[{axis}] = {value:g}"
    if value == 0:
        return f"pixdim[{axis}] = 0 (nibabel would assume 1 mm)"
    if value < 0:
        return f"pixdim[{axis}] = {value:g} (negative: readers disagree, nibabel would use {-value:g} mm)"
    return None


def header_spacing_reasons(header: nib.Nifti1Header | None) -> list[str]:
    """Why the voxel sizes a NIfTI file stores (``stored_nifti_header``) cannot be trusted (empty list: they can).

    Without an sform (``sform_code`` 0) the affine is built from ``pixdim[1..3]``, which nibabel
    silently repairs on load; with an sform the pixdims are not used. ``None`` (not NIfTI): no reason.
    """
    if header is None or int(header["sform_code"]) > 0:
        return []
    axes = range(1, min(3, int(header["dim"][0])) + 1)
    problems = [p for p in (_pixdim_problem(a, float(header["pixdim"][a])) for a in axes) if p]
    if not problems:
        return []
    return [f"degenerate spacing: {', '.join(problems)} in the file header, which has no sform to override it"]


def qc_reasons(image: nib.Nifti1Image, modality: str, limits: QCThresholds, planar: bool = False) -> list[str]:
    """All reasons why ``image`` must be quarantined (empty list: it passes); ``planar``: a 2D picture read as
    one slice, whose slice count is not checked."""
    reasons: list[str] = []
    data = np.asarray(image.dataobj)
    if data.ndim != 3:
        return [f"not a 3D volume (shape {data.shape})"]
    spacing = voxel_spacing(image)
    if abs(np.linalg.det(image.affine[:3, :3])) < 1e-9 or not np.all(np.isfinite(image.affine)):
        reasons.append("degenerate spacing: singular or non-finite affine")
    elif np.any(spacing < limits.spacing_mm[0]) or np.any(spacing > limits.spacing_mm[1]):
        reasons.append(
            f"degenerate spacing: {np.round(spacing, 4).tolist()} mm outside [{limits.spacing_mm[0]}, {limits.spacing_mm[1]}]"
        )
    checked = data.shape[:2] if planar else data.shape
    if min(checked) < limits.min_slices:
        what = "too few pixels" if planar else "too few slices"
        reasons.append(f"{what}: shape {list(data.shape)} has fewer than {limits.min_slices} along an axis")
    finite = np.isfinite(data)
    if not finite.all():
        reasons.append(f"non-finite values: {int((~finite).sum())} NaN/inf voxels")
        return reasons
    if data.size == 0 or data.min() == data.max():
        reasons.append(f"empty image: every voxel is {data.flat[0] if data.size else 'absent'}")
        return reasons
    if modality == "CT":
        lo, hi = float(data.min()), float(data.max())
        if lo < limits.ct_value_range[0] or hi > limits.ct_value_range[1]:
            reasons.append(
                f"implausible HU: values {lo:g}..{hi:g} outside [{limits.ct_value_range[0]:g}, {limits.ct_value_range[1]:g}]"
            )
        air = float(np.percentile(data, limits.ct_air_percentile))
        if air > limits.ct_air_max_hu:
            reasons.append(
                f"implausible HU: {limits.ct_air_percentile:g}th percentile is {air:g} > {limits.ct_air_max_hu:g} "
                "(no air; rescale slope/intercept missing, or not a CT)"
            )
    return reasons
