"""A case's own label map painted over another segmenter's: e.g. MSD tumours over TotalSegmentator's organs.

A ``dataset`` segmenter with ``base: <segmenter>`` (``masks.segmenters.<name>.base``) first runs the base
segmenter on the case, then paints the case's label map over it. The rule:

- every voxel whose dataset label is non-zero takes the dataset's label; the others keep the base label
  (so the dataset's liver replaces the base's liver where both are, and the base's liver stays where
  only it is: a condition that names ``liver`` gets the union of both, matched by name);
- the dataset's ids are shifted by :data:`DATASET_LABEL_OFFSET` (1000), so that they never collide with
  the base's ids (TotalSegmentator's largest class map ends below 200); the names map holds the base's
  names under their own ids and the dataset's ``class_map`` names under ``id + 1000``;
- a base whose ids reach the offset, negative dataset ids, or ids past the int16 label files' range
  are refused (``ValueError``: the case is quarantined with the message).

Any segmenter may have a ``base`` (a TotalSegmentator task painted over ``total``, say), and a base may have
its own base (a chain). The same rule holds at every level with the offset of its depth in the chain
(:func:`chain_offset`: 1000 x the number of segmenters below it), so that a layer's ids never collide with
those of the layers under it: a dataset over an image segmenter keeps + 1000, a segmenter over one that is
itself painted over ``total`` gets + 2000. :func:`painted_only` keeps the classes a layer paints (config
``masks.segmenters.<name>.paint``), e.g. a task's effusions without its whole-lung class.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from medsynth.masks.conditions import matching_ids
from medsynth.masks.types import Segmentation

__all__ = ["DATASET_LABEL_OFFSET", "chain_offset", "overlay_labels", "overlay_segmentation", "painted_only"]

#: added to a dataset label map's ids painted over a base segmenter's map
DATASET_LABEL_OFFSET = 1000
#: label maps are written as int16 (medsynth.masks.stage)
MAX_LABEL_ID = int(np.iinfo(np.int16).max)


def _check_ids(base: np.ndarray, base_names: dict[int, str], own: np.ndarray, offset: int) -> None:
    """Refuse maps whose ids would collide or overflow once the dataset's are shifted by ``offset``."""
    base_max = max([int(base.max()) if base.size else 0, *base_names])
    if base_max >= offset:
        raise ValueError(f"the base label map uses id {base_max}, which collides with the dataset ids "
                         f"shifted by {offset} (medsynth.masks.overlay.DATASET_LABEL_OFFSET)")
    if own.size and int(own.min()) < 0:
        raise ValueError(f"the dataset label map holds negative ids ({int(own.min())})")
    if own.size and int(own.max()) + offset > MAX_LABEL_ID:
        raise ValueError(f"dataset label id {int(own.max())} + {offset} exceeds the int16 label maps ({MAX_LABEL_ID})")


def overlay_labels(base: np.ndarray, base_names: dict[int, str], own: np.ndarray, own_names: dict[int, str],
                   offset: int = DATASET_LABEL_OFFSET) -> tuple[np.ndarray, dict[int, str]]:
    """``own`` (a dataset label map) painted over ``base``: (int16 labels, id -> name) as the module describes."""
    if base.shape != own.shape:
        raise ValueError(f"the dataset label map has shape {own.shape}, the base segmentation {base.shape}")
    own = np.asarray(own).astype(np.int32)
    _check_ids(np.asarray(base), base_names, own, offset)
    labels = np.asarray(base).astype(np.int16, copy=True)
    painted = own != 0
    labels[painted] = (own[painted] + offset).astype(np.int16)
    names = {**{int(i): n for i, n in base_names.items()}, **{int(i) + offset: n for i, n in own_names.items()}}
    return labels, names


def overlay_segmentation(base: Segmentation, own: Segmentation, offset: int = DATASET_LABEL_OFFSET) -> Segmentation:
    """:func:`overlay_labels` on two segmentations of the same grid (the base's affine is kept)."""
    if not np.allclose(base.labels.affine, own.labels.affine, atol=1e-3):
        raise ValueError("the dataset label map and the base segmentation lie on different grids (affines differ)")
    labels, names = overlay_labels(np.asarray(base.labels.dataobj), base.names, np.asarray(own.labels.dataobj),
                                   own.names, offset)
    return Segmentation(nib.Nifti1Image(labels, base.labels.affine), names)


def chain_offset(depth: int) -> int:
    """Id offset of a layer with ``depth`` segmenters below it in its chain (1: the dataset rule's 1000)."""
    if int(depth) < 1:
        raise ValueError(f"a painted layer lies over at least one segmenter (depth {depth})")
    return int(depth) * DATASET_LABEL_OFFSET


def painted_only(own: Segmentation, patterns: list[str] | tuple[str, ...] | None) -> Segmentation:
    """``own`` with only the classes named by ``patterns`` (fnmatch globs over its names) kept; the other
    voxels become 0, so the base shows through them. ``None``: ``own`` unchanged (every label painted)."""
    if patterns is None:
        return own
    keep = matching_ids(own.names, tuple(str(p) for p in patterns))
    if not keep:
        raise ValueError(f"paint patterns {list(patterns)} match none of the classes {sorted(own.names.values())}")
    data = np.asarray(own.labels.dataobj)
    kept = np.where(np.isin(data, keep), data, 0).astype(data.dtype)
    return Segmentation(nib.Nifti1Image(kept, own.labels.affine), {i: own.names[i] for i in keep})
