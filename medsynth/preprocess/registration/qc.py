"""Registration QC: how much of the case's body the transform keeps inside the study grid, the final
similarity metric, and the affine's volume scale, checked against ``preprocess.registration_qc``.

* **body**: CT voxels above ``ct_body_hu`` (-500 HU: soft tissue and bone, not air), MR voxels above
  the image's Otsu threshold; in both, the holes of each axial slice are filled, so the lungs and
  bowel gas enclosed by the body count as body.
* **body fraction**: the share of the case's body voxels whose centres the inverse transform puts
  inside the study grid (exact for an affine, no resampling).
* **metric**: ``AffineTransform.metric_value``, the registration metric of the full-resolution
  metric copies under the final transform (Mattes MI: negative, lower is better; same measure for
  both backends).
* **volume scale**: ``|det A|`` of the transform (grid -> case): case volume per grid volume. The
  body kept in the grid measures ``body_ml * body_fraction / |det A|`` ml on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .geometry import image_data
from .transform import AffineTransform

#: the config section of the thresholds (named in every quarantine reason)
KEY = "preprocess.registration_qc"
#: slices of the body mask mapped at once (bounds memory on large scans)
_CHUNK_SLICES = 16


@dataclass(frozen=True)
class RegistrationQC:
    """Thresholds of the registration QC (``preprocess.registration_qc``; defaults in the schema)."""

    min_body_fraction: float
    #: metric name -> largest acceptable final metric value (None: not checked)
    max_metric: Mapping[str, float | None]
    det_range: tuple[float, float]
    ct_body_hu: float

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None) -> "RegistrationQC":
        """From the ``registration_qc`` section, completed with the schema's defaults."""
        from medsynth.settings import section

        full = section("preprocess", {"registration_qc": dict(cfg or {})})["registration_qc"]
        lo, hi = (float(v) for v in full["det_range"])
        if not 0 < lo < hi:
            raise ValueError(f"{KEY}.det_range must be [low, high] with 0 < low < high, got {full['det_range']}")
        return cls(float(full["min_body_fraction"]), dict(full["max_metric"]), (lo, hi), float(full["ct_body_hu"]))


def body_mask(data: np.ndarray, modality: str, ct_body_hu: float) -> np.ndarray:
    """The body of an (x, y, z) RAS image: CT above ``ct_body_hu``, MR above Otsu; axial holes filled."""
    arr = np.nan_to_num(np.asarray(data, dtype=np.float32))
    body = arr > (ct_body_hu if modality == "CT" else otsu_threshold(arr))
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(body, structure=in_plane)


def otsu_threshold(data: np.ndarray) -> float:
    """Otsu's threshold of the intensities (SimpleITK, 256 bins)."""
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(256)
    otsu.Execute(sitk.GetImageFromArray(np.asarray(data, dtype=np.float32)))
    return float(otsu.GetThreshold())


def fraction_inside(mask: np.ndarray, affine: np.ndarray, transform: AffineTransform, grid: nib.Nifti1Image) -> float:
    """Share of ``mask``'s voxel centres that ``transform`` (grid -> case) maps from inside ``grid``."""
    to_grid = np.linalg.inv(np.asarray(grid.affine, float)) @ np.linalg.inv(transform.matrix) @ np.asarray(affine, float)
    upper = np.asarray(grid.shape[:3], float) - 0.5
    inside = total = 0
    for k0 in range(0, mask.shape[2], _CHUNK_SLICES):
        idx = np.nonzero(mask[:, :, k0:k0 + _CHUNK_SLICES])
        ijk = np.stack(idx, axis=1).astype(np.float64)
        ijk[:, 2] += k0
        g = ijk @ to_grid[:3, :3].T + to_grid[:3, 3]
        inside += int(np.count_nonzero(np.all((g >= -0.5) & (g < upper), axis=1)))
        total += len(ijk)
    return inside / total if total else 0.0


def measure(image: nib.Nifti1Image, modality: str, transform: AffineTransform, grid: nib.Nifti1Image,
            ct_body_hu: float) -> dict[str, float]:
    """The QC measures of one registered case (the columns it adds to the shard table)."""
    body = body_mask(image_data(image), modality, ct_body_hu)
    voxel_ml = abs(float(np.linalg.det(np.asarray(image.affine, float)[:3, :3]))) / 1000.0
    body_ml = float(np.count_nonzero(body)) * voxel_ml
    fraction = fraction_inside(body, image.affine, transform, grid)
    det = abs(float(np.linalg.det(transform.matrix[:3, :3])))
    metric = transform.metric_value
    return {"metric_value": metric if metric is not None else float("nan"), "body_ml": round(body_ml, 1),
            "body_fraction": round(fraction, 4), "registered_body_ml": round(body_ml * fraction / det, 1),
            "affine_det": round(det, 4)}


def failures(measures: Mapping[str, float], qc: RegistrationQC, metric: str) -> list[str]:
    """One phrase per failed check: the measure, its value, the threshold and its config key."""
    found = []
    fraction = measures["body_fraction"]
    if fraction < qc.min_body_fraction:
        found.append(f"{fraction:.1%} of the body inside the study grid"
                     f" (< {KEY}.min_body_fraction {qc.min_body_fraction:g})")
    limit = qc.max_metric.get(metric)
    value = measures["metric_value"]
    if limit is not None and not value <= limit:  # NaN fails too
        found.append(f"final {metric} metric {value:.3f} (> {KEY}.max_metric.{metric} {limit:g}; lower is better)")
    det, (lo, hi) = measures["affine_det"], qc.det_range
    if not lo <= det <= hi:
        found.append(f"affine volume scale |det A| {det:.2f} (outside {KEY}.det_range [{lo:g}, {hi:g}])")
    return found
