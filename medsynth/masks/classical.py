"""A classical CT segmenter: HU thresholds, connected components and morphology.

It needs no weights, so it is the embedded study's segmenter and the fallback of paper studies.
Structures (label ids in ``LABELS``): body, lungs, airways, bone, fat, soft tissue and liver.
Every threshold is a constructor argument, set from config (``masks.segmenters[].classical``).

Method, on a canonical (RAS) CT in HU:
- body: HU > ``body_hu``, largest 3D component, holes filled slice by slice (air in bowel and
  lungs belongs to the body);
- airways: air (HU < ``airway_hu``) inside the body that is connected to the top of the trachea
  (the air component nearest the centre of the most superior body slices where one exists);
- lungs: HU < ``lung_hu`` inside the body, not airways: the (at most two) components above
  ``min_lung_ml`` whose median HU lies in ``lung_median_hu`` and whose 10th percentile is above
  ``lung_p10_min_hu`` (parenchyma, not the pure air of bowel gas);
- bone: HU > ``bone_hu`` inside the body, small components removed, marrow filled slice by slice;
- fat: HU in ``fat_hu``; soft tissue: HU in ``soft_tissue_hu`` (the rest of the body);
- liver: soft tissue in ``liver_hu`` after smoothing, opened to cut bridges to neighbours, the
  largest component whose centre lies on the patient's right.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from medsynth.masks.types import Segmentation

LABELS = {1: "body", 2: "lungs", 3: "airways", 4: "bone", 5: "fat", 6: "soft_tissue", 7: "liver"}


def _largest_components(mask: np.ndarray, keep: int = 1, min_voxels: int = 0) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1][:keep]
    chosen = [i + 1 for i in order if sizes[i] >= min_voxels]
    return np.isin(labels, chosen)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice (axis 2 of a canonical volume)."""
    out = np.empty_like(mask)
    for k in range(mask.shape[2]):
        out[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    return out


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.round(radius_vox).astype(int), 0)
    grid = np.ogrid[tuple(slice(-x, x + 1) for x in r)]
    return sum((g / max(x, 1)) ** 2 for g, x in zip(grid, r)) <= 1.0


@dataclass
class ClassicalCTSegmenter:
    """HU-threshold segmenter for CT (see module docstring); all thresholds in HU, sizes in mm/ml."""

    body_hu: float = -500.0
    lung_hu: float = -400.0
    airway_hu: float = -950.0
    bone_hu: float = 120.0
    fat_hu: tuple[float, float] = (-190.0, -30.0)
    soft_tissue_hu: tuple[float, float] = (-29.0, 150.0)
    liver_hu: tuple[float, float] = (35,80)
    lung_median_hu: tuple[float, float] = (-920.0, -650.0)
    lung_p10_min_hu: float = -900.0
    min_lung_ml: float = 20.0
    min_bone_ml: float = 0.5
    liver_opening_mm: float = 6.0
    liver_smoothing_mm: float = 3.0
    name: str = "classical"

    def segment(self, image: nib.Nifti1Image, modality: str) -> Segmentation:
        """Label map (ids of ``LABELS``) of a canonical CT in HU."""
        if modality != "CT":
            raise ValueError(f"the classical segmenter handles CT only (got {modality}); use totalsegmentator for MR")
        hu = np.asarray(image.dataobj, dtype=np.float32)
        spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        body = _fill_slices(_largest_components(hu > self.body_hu))
        body = ndi.binary_closing(body, structure=np.ones((3, 3, 3)), iterations=1) | body
        air = (hu < self.lung_hu) & body
        airways = self._airways(hu, body)
        lungs = self._lungs(hu, air & ~airways, voxel_ml)
        bone = self._bone(hu, body, voxel_ml)
        fat = body & (hu >= self.fat_hu[0]) & (hu <= self.fat_hu[1])
        soft = body & (hu >= self.soft_tissue_hu[0]) & (hu <= self.soft_tissue_hu[1])
        liver = self._liver(hu, body & ~bone & ~lungs, spacing, image.affine)
        labels = np.zeros(hu.shape, np.uint8)
        # later structures overwrite earlier ones: body < fat/soft tissue < liver < bone < lungs < airways
        for value, mask in [(1, body), (5, fat), (6, soft), (7, liver), (4, bone), (2, lungs), (3, airways)]:
            labels[mask] = value
        return Segmentation(nib.Nifti1Image(labels, image.affine), dict(LABELS))

    def _airways(self, hu: np.ndarray, body: np.ndarray) -> np.ndarray:
        air = (hu < self.airway_hu) & body
        labels, n = ndi.label(air)
        if n == 0:
            return np.zeros_like(air)
        # the trachea: an air component reaching the most superior slices that hold air, near the centre
        top = np.nonzero(air.any(axis=(0, 1)))[0].max()
        centre = np.array(hu.shape[:2]) / 2.0
        best, best_dist = 0, np.inf
        for k in range(top, max(top - 5, -1), -1):
            for lab in np.unique(labels[:, :, k][air[:, :, k]]):
                xy = np.argwhere(labels[:, :, k] == lab).mean(axis=0)
                dist = float(np.linalg.norm(xy - centre))
                if dist < best_dist:
                    best, best_dist = lab, dist
        candidate = labels == best
        # a trachea is a tube: its axial cross-section stays small; a lung or bowel component is not one
        areas = candidate.sum(axis=(0, 1))
        if areas.max() > 0.02 * hu.shape[0] * hu.shape[1] or best_dist > 0.25 * min(hu.shape[:2]):
            return np.zeros_like(air)
        return candidate

    def _lungs(self, hu: np.ndarray, air: np.ndarray, voxel_ml: float) -> np.ndarray:
        """Air components big enough and with the median HU of parenchyma (bowel gas is purer air)."""
        labels, n = ndi.label(air)
        if n == 0:
            return np.zeros_like(air)
        index = np.arange(1, n + 1)
        sizes = ndi.sum(air, labels, index=index)
        medians = ndi.median(hu, labels, index=index)
        p10 = ndi.labeled_comprehension(hu, labels, index, lambda v: np.percentile(v, 10), np.float32, 0.0)
        keep = [i for i, size, med, low in zip(index, sizes, medians, p10)
                if size * voxel_ml >= self.min_lung_ml and self.lung_median_hu[0] <= med <= self.lung_median_hu[1]
                and low >= self.lung_p10_min_hu]
        keep = sorted(keep, key=lambda i: -sizes[i - 1])[:2]
        return np.isin(labels, keep)

    def _bone(self, hu: np.ndarray, body: np.ndarray, voxel_ml: float) -> np.ndarray:
        dense = ndi.median_filter(hu, size=2) > self.bone_hu
        dense &= body
        dense = _largest_components(dense, keep=10**6, min_voxels=max(1, int(self.min_bone_ml / voxel_ml)))
        return _fill_slices(dense) & body

    def _liver(self, hu: np.ndarray, allowed: np.ndarray, spacing: np.ndarray, affine: np.ndarray) -> np.ndarray:
        smooth = ndi.gaussian_filter(hu, sigma=self.liver_smoothing_mm / spacing)
        candidate = allowed & (smooth >= self.liver_hu[0]) & (smooth <= self.liver_hu[1])
        candidate = ndi.binary_opening(candidate, structure=_ball(self.liver_opening_mm / 2 / spacing))
        labels, n = ndi.label(candidate)
        if n == 0:
            return candidate
        sizes = ndi.sum(candidate, labels, index=np.arange(1, n + 1))
        centres = ndi.center_of_mass(candidate, labels, index=np.arange(1, n + 1))
        body_centre_x = (affine @ np.array([*(np.array(hu.shape) / 2.0), 1.0]))[0]
        best = 0
        for i in np.argsort(sizes)[::-1]:
            world_x = (affine @ np.array([*centres[i], 1.0]))[0]
            if world_x > body_centre_x:  # RAS: +x is the patient's right
                best = i + 1
                break
        if best == 0:
            return np.zeros_like(candidate)
        liver = labels == best
        liver = ndi.binary_dilation(liver, structure=_ball(self.liver_opening_mm / 2 / spacing)) & allowed & (
            (smooth >= self.liver_hu[0]) & (smooth <= self.liver_hu[1]))
        return _fill_slices(liver)
