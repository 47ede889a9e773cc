"""The classical CT segmenter, scored against the shipped TotalSegmentator labels, on the shipped scans
and on harder versions of them (``ct_variants``): contrast enhancement and a field of view that cuts
the body.

Measured (Dice; the floors below sit a little under these):
- ct/upper_abdomen_ct_3mm (non-contrast, lung bases at the top): lungs 0.965, bone (vertebrae + ribs)
  0.694, liver 0.881; the body mask holds 100 % of the labelled voxels;
- the same made portal-venous (``ct_variants.enhanced``: liver median 46 -> 96 HU, kidneys ~160 HU):
  lungs 0.965, bone 0.650, liver 0.898 (a fixed 35-80 HU liver window gives 0.000, bone without the
  cortex test 0.415);
- the scan cropped through both lung bases and the back (``UPPER_ABDOMEN_CROP``): lungs 0.969, bone
  0.733, liver 0.887; enhanced and cropped: lungs 0.969, bone 0.676, liver 0.899 (lungs 0.000 when
  the air a crop opens to the border counts as outside);
- ct/abdomen_pelvis_ct_3mm cropped the same way, on its slices 82-111 (= the upper-abdomen scan):
  lungs 0.969, liver 0.886;
- ct/chest_cta_1p5mm at 3 mm cropped through both lungs (``CHEST_CROP``, no reference labels): its lungs
  against those of the uncropped scan inside the crop 0.997 (0.205 before).
"""

from __future__ import annotations

import ct_variants
import nibabel as nib
import numpy as np
import pytest
from totalsegmentator.map_to_binary import class_map

from medsynth.io.volume import canonical
from medsynth.masks.backend import make_segmenter
from medsynth.masks.classical import LABELS, ClassicalCTSegmenter, classical_options, fill_body_slices

TOTAL = {name: i for i, name in class_map["total"].items()}
BONE_PREFIXES = ("vertebrae", "rib_", "sternum", "hip_", "femur", "sacrum", "humerus", "scapula", "clavicula", "skull")
REFERENCE = {
    "lungs": [i for n, i in TOTAL.items() if n.startswith("lung_")],
    "bone": [i for n, i in TOTAL.items() if n.startswith(BONE_PREFIXES)],
    "liver": [TOTAL["liver"]],
}
IDS = {name: i for i, name in LABELS.items()}
#: the upper abdomen (122 x 101 voxels in plane) cut through both lung bases (x 10-105) and the back:
#: both lungs touch the image border and keep more than min_lung_ml each
UPPER_ABDOMEN_CROP = (slice(20, 96), slice(20, None), slice(None))
#: the chest CT at 3 mm (116 x 83 in plane; lungs x 10-103, y 12-73) cut through both lungs and the back
CHEST_CROP = (slice(22, 94), slice(20, None), slice(None))
#: slices of abdomen_pelvis_ct_3mm that are upper_abdomen_ct_3mm (see resources/example_data/README.md)
UPPER_ABDOMEN_SLICES = slice(82, 112)
#: ml of one voxel of the chest CT downsampled to 3 mm
CHEST_VOXEL_ML = 0.027
#: fewer ml than the two lungs of an adult at the inspiration of a chest CT (the shipped one: ~3900 ml)
MIN_CHEST_LUNGS_ML = 3000.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _load(example_dir, name: str) -> nib.Nifti1Image:
    return canonical(nib.load(str(example_dir / name)))


@pytest.fixture(scope="module")
def segmenter() -> ClassicalCTSegmenter:
    return ClassicalCTSegmenter()


@pytest.fixture(scope="module")
def upper_abdomen(example_dir):
    """The shipped upper-abdomen CT and its TotalSegmentator labels."""
    image = _load(example_dir, "ct/upper_abdomen_ct_3mm.nii.gz")
    return image, np.asarray(_load(example_dir, "labels/upper_abdomen_ct_3mm_total.nii.gz").dataobj)


@pytest.fixture(scope="module")
def segmented(upper_abdomen, segmenter):
    image, reference = upper_abdomen
    seg = segmenter.segment(image, "CT")
    return image, np.asarray(seg.labels.dataobj), reference, seg


@pytest.fixture(scope="module")
def variants(upper_abdomen, segmenter):
    """Label maps and references of the enhanced, cropped, and enhanced + cropped upper abdomen."""
    image, reference = upper_abdomen
    enhanced = ct_variants.enhanced(image, reference)
    cases = {"enhanced": (enhanced, reference),
             "cropped": (ct_variants.crop(image, UPPER_ABDOMEN_CROP), reference[UPPER_ABDOMEN_CROP]),
             "enhanced_cropped": (ct_variants.crop(enhanced, UPPER_ABDOMEN_CROP), reference[UPPER_ABDOMEN_CROP])}
    return {name: (np.asarray(segmenter.segment(img, "CT").labels.dataobj), ref, img) for name, (img, ref) in cases.items()}


def _score(labels: np.ndarray, reference: np.ndarray, structure: str) -> float:
    return _dice(labels == IDS[structure], np.isin(reference, REFERENCE[structure]))


def test_geometry_and_names(segmented):
    image, labels, _, seg = segmented
    assert labels.shape == image.shape and np.allclose(seg.labels.affine, image.affine)
    assert set(np.unique(labels)) <= {0, *LABELS}
    assert seg.names == LABELS


@pytest.mark.parametrize("structure,floor", [("lungs", 0.94), ("bone", 0.67), ("liver", 0.86)])
def test_dice_against_totalsegmentator(segmented, structure, floor):
    _, labels, reference, _ = segmented
    assert _score(labels, reference, structure) >= floor


@pytest.mark.parametrize("variant,structure,floor", [
    ("enhanced", "lungs", 0.94), ("enhanced", "bone", 0.62), ("enhanced", "liver", 0.86),
    ("cropped", "lungs", 0.94), ("cropped", "bone", 0.70), ("cropped", "liver", 0.86),
    ("enhanced_cropped", "lungs", 0.94), ("enhanced_cropped", "bone", 0.64), ("enhanced_cropped", "liver", 0.86),
])
def test_dice_on_contrast_and_cropped_field(variants, variant, structure, floor):
    labels, reference, _ = variants[variant]
    assert _score(labels, reference, structure) >= floor


@pytest.mark.parametrize("variant", ["enhanced", "cropped"])
def test_liver_window_follows_the_scan(variants, variant):
    """The liver found has the HU of the reference liver, enhanced (~96 HU) or not (~46 HU)."""
    labels, reference, image = variants[variant]
    hu = np.asarray(image.dataobj)
    assert abs(np.median(hu[labels == IDS["liver"]]) - np.median(hu[reference == TOTAL["liver"]])) <= 10.0


def test_enhanced_kidneys_and_vessels_are_not_bone(variants):
    labels, reference, _ = variants["enhanced"]
    dense = np.isin(reference, [TOTAL[n] for n in ("kidney_left", "kidney_right", "inferior_vena_cava",
                                                   "portal_vein_and_splenic_vein")])
    assert (labels[dense] == IDS["bone"]).mean() <= 0.05


def test_cropped_abdomen_pelvis_keeps_its_lungs(example_dir, upper_abdomen, segmenter):
    _, reference = upper_abdomen
    image = ct_variants.crop(_load(example_dir, "ct/abdomen_pelvis_ct_3mm.nii.gz"), UPPER_ABDOMEN_CROP)
    labels = np.asarray(segmenter.segment(image, "CT").labels.dataobj)[:, :, UPPER_ABDOMEN_SLICES]
    assert _score(labels, reference[UPPER_ABDOMEN_CROP], "lungs") >= 0.94
    assert _score(labels, reference[UPPER_ABDOMEN_CROP], "liver") >= 0.85


def test_cropped_chest_keeps_its_lungs(example_dir, segmenter):
    """Lungs of the chest CT cut through both lungs = lungs of the whole scan inside the crop."""
    chest = ct_variants.downsample(_load(example_dir, "ct/chest_cta_1p5mm.nii.gz"), 2)
    whole = np.asarray(segmenter.segment(chest, "CT").labels.dataobj) == IDS["lungs"]
    cropped = np.asarray(segmenter.segment(ct_variants.crop(chest, CHEST_CROP), "CT").labels.dataobj) == IDS["lungs"]
    assert whole.sum() * CHEST_VOXEL_ML > MIN_CHEST_LUNGS_ML
    assert _dice(cropped, whole[CHEST_CROP]) >= 0.98


def test_lung_open_to_the_border_is_inside_the_body():
    """A slice whose body is cut by the image border: the parenchyma-like region open to the border is
    body, the pure air around the patient is not, an enclosed hole is filled."""
    hu = np.full((40, 40, 1), -1000.0, np.float32)
    hu[5:40, 5:35] = 40.0                   # the body, cut by the border at x = 39
    hu[20:40, 12:28] = -850.0               # a lung reaching the cut
    hu[10:14, 15:19] = -1000.0              # bowel gas enclosed in the body
    filled = fill_body_slices(hu > -500.0, hu, (-920.0, -650.0), -900.0)[:, :, 0]
    assert filled[30, 20] and filled[12, 17] and filled[20, 30]
    assert not filled[2, 2] and not filled[30, 37]


def test_mattress_under_a_body_spanning_the_image_stays_outside():
    """Below shoulders that touch both sides of the image: foam and air (median like a lung's, but pure
    air in its 10th percentile) is not body."""
    hu = np.full((40, 40, 1), 40.0, np.float32)   # the body spans x; y = 0-9 is under it
    hu[:, :10] = -880.0                            # foam ...
    hu[::3, :10] = -1000.0                         # ... with air between
    filled = fill_body_slices(hu > -500.0, hu, (-920.0, -650.0), -900.0)[:, :, 0]
    assert not filled[:, :10].any() and filled[:, 10:].all()


def test_body_contains_every_labelled_structure(segmented):
    _, labels, reference, _ = segmented
    assert np.logical_and(labels > 0, reference > 0).sum() / (reference > 0).sum() >= 0.99


def test_mr_is_refused_with_a_clear_message(example_dir, segmenter):
    image = _load(example_dir, "mr/abdomen_mr_3mm.nii.gz")
    with pytest.raises(ValueError, match="CT only"):
        segmenter.segment(image, "MR")


def test_factory_passes_config_thresholds():
    seg = make_segmenter({"backend": "classical", "classical": {"bone_hu": 300}})
    assert isinstance(seg, ClassicalCTSegmenter) and seg.bone_hu == 300
    with pytest.raises(ValueError, match="unknown segmenter backend"):
        make_segmenter({"backend": "nope"})


def test_defaults_come_from_the_schema():
    defaults = classical_options()
    seg = ClassicalCTSegmenter()
    assert seg.liver_hu is None and seg.liver_window_hu == tuple(defaults["liver_window_hu"])
    assert seg.bone_seed_hu == defaults["bone_seed_hu"]
    with pytest.raises(Exception, match="not_an_option"):
        ClassicalCTSegmenter(not_an_option=1)


def test_fixed_liver_window_is_still_available(segmented):
    """``liver_hu`` [35, 80] with a 6 mm opening: the earlier fixed-window liver (Dice 0.853)."""
    image, _, reference, _ = segmented
    labels = np.asarray(ClassicalCTSegmenter(liver_hu=[35, 80], liver_opening_mm=6).segment(image, "CT").labels.dataobj)
    assert _score(labels, reference, "liver") >= 0.83
