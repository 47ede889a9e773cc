"""Harder versions of the shipped CTs for the classical segmenter's tests: contrast enhancement and a cropped field.

- ``enhanced``: a portal-venous-phase look made from the non-contrast upper-abdomen CT by adding, inside
  each TotalSegmentator structure, the enhancement of ``ENHANCEMENT_HU`` (smoothed by a Gaussian of
  ``PARTIAL_VOLUME_MM`` so that organ borders blur as in a real scan). The liver then has a median of
  about 96 HU (46 HU before), as in real portal-venous CT (liver 90-110 HU).
- ``crop``: the scan cut to an index box, its affine moved so the world position of every voxel stays.
- ``downsample``: block means, for fast tests on the 1.5 mm chest CT.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from totalsegmentator.map_to_binary import class_map

#: HU added inside each TotalSegmentator `total` structure: typical portal-venous enhancement (about 70 s
#: after injection): liver +50 (non-contrast ~50 -> ~100 HU), spleen +75 (~110 HU), kidneys +150
#: (nephrographic cortex/medulla ~160 HU), aorta and portal / splenic vein +130 (~170 HU), IVC +90 (mixed
#: enhanced and unenhanced return), pancreas +60, adrenals +40, muscle +10.
ENHANCEMENT_HU = {
    "liver": 50.0, "spleen": 75.0, "kidney_right": 150.0, "kidney_left": 150.0, "aorta": 130.0,
    "portal_vein_and_splenic_vein": 130.0, "inferior_vena_cava": 90.0, "pancreas": 60.0,
    "adrenal_gland_right": 40.0, "adrenal_gland_left": 40.0, "autochthon_left": 10.0, "autochthon_right": 10.0,
    "iliopsoas_left": 10.0, "iliopsoas_right": 10.0,
}
#: Gaussian sigma (mm) applied to the enhancement field: partial volume at organ borders
PARTIAL_VOLUME_MM = 1.5

TOTAL_IDS = {name: i for i, name in class_map["total"].items()}


def enhanced(image: nib.Nifti1Image, reference: np.ndarray) -> nib.Nifti1Image:
    """``image`` (canonical CT in HU) with ``ENHANCEMENT_HU`` added inside the structures of ``reference``."""
    hu = np.asarray(image.dataobj, dtype=np.float32)
    delta = np.zeros(hu.shape, np.float32)
    for name, gain in ENHANCEMENT_HU.items():
        delta[reference == TOTAL_IDS[name]] = gain
    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    delta = ndi.gaussian_filter(delta, sigma=PARTIAL_VOLUME_MM / spacing)
    return nib.Nifti1Image(hu + delta, image.affine)


def crop(image: nib.Nifti1Image, box: tuple[slice, slice, slice]) -> nib.Nifti1Image:
    """The voxels of ``box`` (index slices), with the affine shifted so that world positions are kept."""
    data = np.asarray(image.dataobj)[box]
    start = np.array([s.start or 0 for s in box] + [1.0])
    affine = image.affine.copy()
    affine[:3, 3] = (image.affine @ start)[:3]
    return nib.Nifti1Image(data, affine)


def downsample(image: nib.Nifti1Image, factor: int) -> nib.Nifti1Image:
    """Mean of ``factor``^3 blocks (the trailing partial blocks dropped); the affine scaled to match."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    shape = [n // factor for n in data.shape]
    data = data[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    data = data.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] * factor
    affine[:3, 3] = (image.affine @ np.array([(factor - 1) / 2.0] * 3 + [1.0]))[:3]
    return nib.Nifti1Image(data, affine)
