"""Label maps -> condition masks: binary channels, lobe boundaries, [-0.5, 0.5] values, mask QC."""

from __future__ import annotations

import numpy as np

from medsynth.io.trainsets import to_condition_values
from medsynth.masks.conditions import ConditionSpec, condition_masks, lobe_boundaries, matching_ids

NAMES = {1: "lung_upper_lobe_left", 2: "lung_lower_lobe_left", 3: "liver", 4: "kidney_left", 5: "kidney_right"}


def _labels():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[2:10, 2:18, 10:18] = 1
    labels[2:10, 2:18, 2:10] = 2
    labels[12:18, 2:10, 2:18] = 3
    labels[12:15, 12:15, 5:8] = 4
    return labels


def test_matching_by_glob():
    assert matching_ids(NAMES, ("kidney_*",)) == [4, 5]
    assert matching_ids(NAMES, ("lung_*", "liver")) == [1, 2, 3]


def test_binary_channels_and_volumes():
    specs = [ConditionSpec.from_config({"name": "liver", "structures": ["liver"]}),
             ConditionSpec.from_config({"name": "kidneys", "structures": ["kidney_*"]})]
    result = condition_masks(_labels(), NAMES, specs, voxel_ml=0.027)
    assert result.channels.shape == (2, 20, 20, 20) and result.channels.dtype == np.uint8
    assert result.channels[0].sum() == 6 * 8 * 16 and result.channels[1].sum() == 27
    assert abs(result.volumes_ml["kidneys"] - 27 * 0.027) < 1e-9 and not result.reasons


def test_lobe_boundaries_are_dilated_boundaries_of_each_lobe():
    labels = _labels()
    boundary = lobe_boundaries(labels, [1, 2])
    # the interface between the two lobes (z = 9/10) is a boundary although both sides are lung
    assert boundary[5, 8, 9] and boundary[5, 8, 10]
    # deep inside a lobe, more than 2 voxels from any of its faces, is not
    assert not boundary[5, 8, 14]
    # dilation by 3x3x3: one voxel outside the lung is included
    assert boundary[10, 8, 14] and not boundary[11, 8, 14]


def test_values_are_mapped_to_plus_minus_half():
    np.testing.assert_array_equal(to_condition_values(np.array([0, 1], np.uint8)), [-0.5, 0.5])


def test_mask_qc_reasons():
    specs = [ConditionSpec.from_config({"name": "lungs", "structures": ["lung_*"], "required": True, "max_ml": 1.0}),
             ConditionSpec.from_config({"name": "spleen", "structures": ["spleen"], "required": True}),
             ConditionSpec.from_config({"name": "kidneys", "structures": ["kidney_*"], "min_ml": 5.0})]
    result = condition_masks(_labels(), NAMES, specs, voxel_ml=0.027)
    assert any(r.startswith("mask volume out of range: lungs") for r in result.reasons)
    assert "empty mask: spleen" in result.reasons
    assert any(r.startswith("mask volume out of range: kidneys") for r in result.reasons)
