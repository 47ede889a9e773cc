"""The classical CT segmenter, scored against the shipped TotalSegmentator labels.

Measured on ct/upper_abdomen_ct_3mm (non-contrast, lung bases at the top): Dice lungs 0.965,
bone 0.700 (vertebrae + ribs), liver 0.853; the body mask holds 100 % of the labelled voxels.
The floors below sit a little under those numbers.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from totalsegmentator.map_to_binary import class_map

from medsynth.io.volume import canonical
from medsynth.masks.backend import make_segmenter
from medsynth.masks.classical import LABELS, ClassicalCTSegmenter

TOTAL = {name: i for i, name in class_map["total"].items()}
BONE_PREFIXES = ("vertebrae", "rib_", "sternum", "hip_", "femur", "sacrum", "humerus", "scapula", "clavicula", "skull")
IDS = {name: i for i, name in LABELS.items()}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def segmented(example_dir):
    image = canonical(nib.load(str(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz")))
    reference = np.asarray(canonical(nib.load(str(example_dir / "labels" / "upper_abdomen_ct_3mm_total.nii.gz"))).dataobj)
    seg = ClassicalCTSegmenter().segment(image, "CT")
    return image, np.asarray(seg.labels.dataobj), reference, seg


def test_geometry_and_names(segmented):
    image, labels, _, seg = segmented
    assert labels.shape == image.shape and np.allclose(seg.labels.affine, image.affine)
    assert set(np.unique(labels)) <= {0, *LABELS}
    assert seg.names == LABELS


@pytest.mark.parametrize("structure,reference_names,floor", [
    ("lungs", [n for n in TOTAL if n.startswith("lung_")], 0.93),
    ("bone", [n for n in TOTAL if n.startswith(BONE_PREFIXES)], 0.65),
    ("liver", ["liver"], 0.80),
])
def test_dice_against_totalsegmentator(segmented, structure, reference_names, floor):
    _, labels, reference, _ = segmented
    ours = labels == IDS[structure]
    theirs = np.isin(reference, [TOTAL[n] for n in reference_names])
    assert _dice(ours, theirs) >= floor


def test_body_contains_every_labelled_structure(segmented):
    _, labels, reference, _ = segmented
    assert np.logical_and(labels > 0, reference > 0).sum() / (reference > 0).sum() >= 0.99


def test_mr_is_refused_with_a_clear_message(example_dir):
    image = canonical(nib.load(str(example_dir / "mr" / "abdomen_mr_3mm.nii.gz")))
    with pytest.raises(ValueError, match="CT only"):
        ClassicalCTSegmenter().segment(image, "MR")


def test_factory_passes_config_thresholds():
    seg = make_segmenter({"backend": "classical", "classical": {"bone_hu": 300}})
    assert isinstance(seg, ClassicalCTSegmenter) and seg.bone_hu == 300
    with pytest.raises(ValueError, match="unknown segmenter backend"):
        make_segmenter({"backend": "nope"})
