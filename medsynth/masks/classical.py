"""A classical CT segmenter: HU thresholds, connected components and morphology.

It needs no weights, so it is the embedded study's segmenter and the fallback of paper studies.
Structures (label ids in ``LABELS``): body, lungs, airways, bone, fat, soft tissue and liver.
Every option comes from config (``masks.segmenters.<name>.classical``); ``config/schema.yaml`` holds
the defaults, filled in for the keys a caller leaves out.

Method, on a canonical (RAS) CT in HU; contrast enhancement and a field of view that cuts the body
are allowed:
- body: HU > ``body_hu``, largest 3D component, holes filled slice by slice (air in bowel and
  lungs belongs to the body); a region of a slice open to the image border is outside air unless
  it has the HU of lung parenchyma (``lung_median_hu``, ``lung_p10_min_hu``): a lung cut by the
  field of view, not the purer air around the patient;
- airways: air (HU < ``airway_hu``) inside the body that is connected to the top of the trachea
  (the air component nearest the centre of the body in the most superior slices that hold air);
- lungs: HU < ``lung_hu`` inside the body, not airways: the (at most two) components above
  ``min_lung_ml`` whose median HU lies in ``lung_median_hu`` and whose 10th percentile is above
  ``lung_p10_min_hu`` (parenchyma, not the pure air of bowel gas);
- bone: HU > ``bone_hu`` inside the body, the components of at least ``min_bone_ml`` of which at
  least ``bone_seed_fraction`` reaches ``bone_seed_hu`` (cortex; kidneys and vessels enhanced by
  contrast are as dense as marrow but have none), marrow filled slice by slice;
- fat: HU in ``fat_hu``; soft tissue: HU in ``soft_tissue_hu`` (the rest of the body);
- liver: smoothed HU in a window around the scan's own liver level (``liver_window_hu``; or the
  fixed ``liver_hu``), opened to cut bridges to neighbours, the largest component lying mostly on
  the patient's right. The level starts as the window (searched over ``liver_level_hu``) that holds
  the thickest organ on the right (:meth:`ClassicalCTSegmenter.liver_level`), then moves to the
  median of the liver found until it settles, so non-contrast (liver ~50 HU) and portal-venous
  (~100 HU) scans both work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from medsynth.masks.types import Segmentation

LABELS = {1: "body", 2: "lungs", 3: "airways", 4: "bone", 5: "fat", 6: "soft_tissue", 7: "liver"}
#: step (HU) between the liver levels tried
LEVEL_STEP_HU = 5.0
#: the level search runs on every n-th voxel so that its grid is at least this coarse (mm): the HU is
#: smoothed first (liver_smoothing_mm), and the cores sought are several of these voxels wide
SEARCH_SPACING_MM = 3.0
#: most liver passes: the level settles within 2-4 re-centrings on the shipped scans and their variants
MAX_LIVER_PASSES = 6
#: the liver level has settled when a pass moves it by less than this (HU)
LEVEL_TOLERANCE_HU = 1.0


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


def fill_body_slices(body: np.ndarray, hu: np.ndarray, median_hu: tuple[float, float], p10_min_hu: float) -> np.ndarray:
    """Per axial slice: ``body`` with its holes filled, a body cut by the field of view included.

    A region open to the image border is outside air, unless it has the HU of lung parenchyma: median
    in ``median_hu``, 10th percentile above ``p10_min_hu`` (a lung the field of view cuts; the air
    around the patient, with or without a mattress in it, has a purer-air 10th percentile).
    """
    out = np.empty_like(body)
    for k in range(body.shape[2]):
        filled = ndi.binary_fill_holes(body[:, :, k])
        regions, n = ndi.label(~filled)
        for i in range(1, n + 1):
            values = hu[:, :, k][regions == i]
            if median_hu[0] <= np.median(values) <= median_hu[1] and np.percentile(values, 10) >= p10_min_hu:
                filled |= regions == i
        out[:, :, k] = filled
    return out


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.round(radius_vox).astype(int), 0)
    grid = np.ogrid[tuple(slice(-x, x + 1) for x in r)]
    return sum((g / max(x, 1)) ** 2 for g, x in zip(grid, r)) <= 1.0


def right_side(body: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Boolean (X, 1, 1) mask of the patient's right of the body's centre (RAS: +x is the right); the body's
    centre, not the image's, so that a field of view off the patient's midline does not move it."""
    centre = np.array(ndi.center_of_mass(body))
    ijk = np.ones((4, body.shape[0]))
    ijk[0], ijk[1], ijk[2] = np.arange(body.shape[0]), centre[1], centre[2]
    world_x = (affine @ ijk)[0]
    centre_x = (affine @ np.array([*centre, 1.0]))[0]
    return (world_x > centre_x)[:, None, None]


def _option(value: Any) -> Any:
    """A config value as the segmenter keeps it: numbers as float, pairs as tuples of float, None as is."""
    if isinstance(value, list):
        return tuple(float(v) for v in value)
    return float(value) if isinstance(value, (int, float)) else value


@dataclass(init=False)
class ClassicalCTSegmenter:
    """HU-threshold segmenter for CT (see module docstring); thresholds in HU, sizes in mm / ml.

    Build with the options of ``masks.segmenters.<name>.classical``; the schema's defaults fill in
    the rest (an unknown option or a wrong type raises).
    """

    body_hu: float
    lung_hu: float
    airway_hu: float
    bone_hu: float
    bone_seed_hu: float
    bone_seed_fraction: float
    fat_hu: tuple[float, float]
    soft_tissue_hu: tuple[float, float]
    liver_hu: tuple[float, float] | None
    liver_window_hu: tuple[float, float]
    liver_level_hu: tuple[float, float]
    liver_core_mm: float
    lung_median_hu: tuple[float, float]
    lung_p10_min_hu: float
    min_lung_ml: float
    min_bone_ml: float
    liver_opening_mm: float
    liver_smoothing_mm: float
    name: ClassVar[str] = "classical"

    def __init__(self, **options: Any) -> None:
        values = classical_options(options)
        for f in fields(self):
            setattr(self, f.name, _option(values[f.name]))

    def segment(self, image: nib.Nifti1Image, modality: str) -> Segmentation:
        """Label map (ids of ``LABELS``) of a canonical CT in HU."""
        if modality != "CT":
            raise ValueError(f"the classical segmenter handles CT only (got {modality}); use totalsegmentator for MR")
        hu = np.asarray(image.dataobj, dtype=np.float32)
        spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        body = fill_body_slices(_largest_components(hu > self.body_hu), hu, self.lung_median_hu, self.lung_p10_min_hu)
        body = ndi.binary_closing(body, structure=np.ones((3, 3, 3)), iterations=1) | body
        air = (hu < self.lung_hu) & body
        airways = self._airways(hu, body)
        lungs = self._lungs(hu, air & ~airways, voxel_ml)
        bone = self._bone(hu, body, voxel_ml)
        fat = body & (hu >= self.fat_hu[0]) & (hu <= self.fat_hu[1])
        soft = body & (hu >= self.soft_tissue_hu[0]) & (hu <= self.soft_tissue_hu[1])
        liver = self._liver(hu, body, bone, lungs, image.affine)
        labels = np.zeros(hu.shape, np.uint8)
        # later structures overwrite earlier ones: body < fat/soft tissue < liver < bone < lungs < airways
        for value, mask in [(1, body), (5, fat), (6, soft), (7, liver), (4, bone), (2, lungs), (3, airways)]:
            labels[mask] = value
        return Segmentation(nib.Nifti1Image(labels, image.affine), dict(LABELS))

    def _airways(self, hu: np.ndarray, body: np.ndarray) -> np.ndarray:
        """The trachea and what connects to it (module docstring); nothing when no candidate looks like one."""
        air = (hu < self.airway_hu) & body
        labels, n = ndi.label(air)
        if n == 0:
            return np.zeros_like(air)
        # the trachea: an air component reaching the most superior slices that hold air, near the body's centre
        top = np.nonzero(air.any(axis=(0, 1)))[0].max()
        best, best_dist = 0, np.inf
        for k in range(top, max(top - 5, -1), -1):
            centre = np.argwhere(body[:, :, k]).mean(axis=0)
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
        """Dense components with enough cortex (``bone_seed_fraction`` at ``bone_seed_hu``; enhanced organs and
        vessels have none), marrow filled slice by slice."""
        dense = (ndi.median_filter(hu, size=2) > self.bone_hu) & body
        labels, n = ndi.label(dense)
        if n == 0:
            return dense
        index = np.arange(1, n + 1)
        sizes = ndi.sum(dense, labels, index=index)
        seeds = ndi.sum(dense & (hu >= self.bone_seed_hu), labels, index=index)
        min_voxels = max(1, int(self.min_bone_ml / voxel_ml))
        keep = index[(sizes >= min_voxels) & (seeds >= self.bone_seed_fraction * sizes)]
        return _fill_slices(np.isin(labels, keep)) & body

    def _liver(self, hu: np.ndarray, body: np.ndarray, bone: np.ndarray, lungs: np.ndarray,
               affine: np.ndarray) -> np.ndarray:
        """The liver: fixed window, or the scan's own level re-centred on the liver found (module docstring)."""
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        smooth = ndi.gaussian_filter(hu, sigma=self.liver_smoothing_mm / spacing)
        allowed = body & ~bone & ~lungs
        right = right_side(body, affine)
        if self.liver_hu is not None:
            return self._liver_in_window(smooth, allowed, right, spacing, self.liver_hu)
        level = self.liver_level(smooth, allowed & right, spacing)
        liver = np.zeros_like(allowed)
        if level is None:
            return liver
        for _ in range(MAX_LIVER_PASSES):  # re-centre the window on the liver found until it settles
            liver = self._liver_in_window(smooth, allowed, right, spacing, self._window(level))
            if not liver.any():
                break
            previous, level = level, float(np.median(smooth[liver]))
            if abs(level - previous) < LEVEL_TOLERANCE_HU:
                break
        return liver

    def liver_level(self, smooth: np.ndarray, region: np.ndarray, spacing: np.ndarray) -> float | None:
        """The level in ``liver_level_hu`` whose window holds the thickest organ of ``region`` (the patient's
        right): the largest component that still exists after erosion by a ball of ``liver_core_mm``
        (muscles and bowel walls with the liver's HU are thinner). None when no window holds such a core."""
        stride = np.maximum(1, np.floor(SEARCH_SPACING_MM / spacing)).astype(int)
        grid = tuple(slice(None, None, s) for s in stride)
        smooth, region = smooth[grid], region[grid]
        ball = _ball(self.liver_core_mm / (spacing * stride))
        best, best_size = None, 0.0
        for level in np.arange(self.liver_level_hu[0], self.liver_level_hu[1] + LEVEL_STEP_HU / 2, LEVEL_STEP_HU):
            low, high = self._window(float(level))
            core = ndi.binary_erosion(region & (smooth >= low) & (smooth <= high), structure=ball)
            labels, n = ndi.label(core)
            size = float(np.max(ndi.sum(core, labels, index=np.arange(1, n + 1)))) if n else 0.0
            if size > best_size:
                best, best_size = float(level), size
        return best

    def _window(self, level: float) -> tuple[float, float]:
        """The liver window around ``level``."""
        return level - self.liver_window_hu[0], level + self.liver_window_hu[1]

    def _liver_in_window(self, smooth: np.ndarray, allowed: np.ndarray, right: np.ndarray, spacing: np.ndarray,
                         window: tuple[float, float]) -> np.ndarray:
        """The largest component of ``allowed`` with smoothed HU in ``window`` lying mostly on the patient's
        right, after opening; grown back by the opening ball within the window, holes filled per slice."""
        in_window = allowed & (smooth >= window[0]) & (smooth <= window[1])
        ball = _ball(self.liver_opening_mm / 2 / spacing)
        candidate = ndi.binary_opening(in_window, structure=ball)
        labels, n = ndi.label(candidate)
        if n == 0:
            return candidate
        index = np.arange(1, n + 1)
        sizes = ndi.sum(candidate, labels, index=index)
        on_right = ndi.sum(candidate & right, labels, index=index) > sizes / 2.0
        if not on_right.any():
            return np.zeros_like(candidate)
        best = index[on_right][np.argmax(sizes[on_right])]
        liver = ndi.binary_dilation(labels == best, structure=ball) & in_window
        return _fill_slices(liver)


def classical_options(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``options`` completed with the schema's defaults of ``masks.segmenters.<name>.classical``."""
    from medsynth.settings import section

    masks = section("masks", {"segmenters": {"classical": {"backend": "classical", "classical": dict(options or {})}}})
    return masks["segmenters"]["classical"]["classical"]
