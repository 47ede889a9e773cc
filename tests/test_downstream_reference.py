"""A task's reference segmenters (MedSyn2 Table 5's MedPSeg row): the slices' way back to HU, the backend's
labels made into the learned channels, the record (computed, or unavailable without weights) and the table
rows beside the paper's. MedPSeg is a randomly initialised network of the released topology here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ct_slice_shard
from medsynth.evaluation.downstream_reference import reference_config, reference_masks, run_reference, unit_to_hu
from medsynth.io.trainsets import load_rows, read_index, select_rows
from medsynth.masks.medpseg_net import CHECKPOINT_PREFIX, MedPSegNet
from medsynth.masks.types import Segmentation
from medsynth.tables.medsyn2_table5 import NO_REFERENCE, medsyn2_table5

NAMES = ["soft", "lungs", "bone", "contrast", "empty"]
HU_RANGE = [-1024, 1024]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """12 slices of the shipped CT (threshold masks), slices 5 and 11 in the test split."""
    return ct_slice_shard(tmp_path_factory.mktemp("reference"), NAMES, n=12, size=32)


def _downstream(references: dict, channels=("lungs",)) -> dict:
    return {"test_select": {"split": ["test"]}, "channels": None, "distance_unit": "px",
            "tasks": {"lungtask": {"settings": ["real"], "channels": list(channels), "references": references}}}


def test_unit_to_hu_by_hand():
    # window [-1350, 150]: -1 -> -1350, 0 -> the centre -600, 1 -> 150
    np.testing.assert_allclose(unit_to_hu(np.array([-1.0, 0.0, 1.0]), (-1350, 150)), [-1350, -600, 150])
    with pytest.raises(ValueError, match="must rise"):
        unit_to_hu(np.zeros(1), (150, -1350))


def test_reference_config_names_what_is_wrong():
    masks = {"segmenters": {"gt": {"backend": "dataset", "class_map": {1: "lung"}}, "m": {"backend": "medpseg"}}}
    ref = {"segmenter": "m", "structures": {"lungs": ["lung"]}}
    assert reference_config(_downstream({"r": ref}), masks, "lungtask", "r")[1] == {"backend": "medpseg"}
    with pytest.raises(ValueError, match=r"no reference 'x'.*\['r'\]"):
        reference_config(_downstream({"r": ref}), masks, "lungtask", "x")
    with pytest.raises(ValueError, match="'nope' is not a masks.segmenters entry"):
        reference_config(_downstream({"r": {**ref, "segmenter": "nope"}}), masks, "lungtask", "r")
    with pytest.raises(ValueError, match="dataset's own label maps"):
        reference_config(_downstream({"r": {**ref, "segmenter": "gt"}}), masks, "lungtask", "r")


def test_each_slice_reaches_the_backend_as_a_one_slice_ras_ct_and_its_labels_make_the_channels():
    seen = []

    def segment(image, modality):
        seen.append((np.asarray(image.dataobj).copy(), image.affine.copy(), modality))
        data = np.asarray(image.dataobj)
        labels = ((data > 0) + 2 * (data < -500)).astype(np.int16)  # 1 "dense", 2 "air"
        return Segmentation(type(image)(labels, image.affine), {1: "dense", 2: "air", 3: "other"})

    hu = np.array([[[[100.0, -900.0], [0.0, -100.0]]]], np.float32)  # one slice (N=1, 1, 2, 2)
    out = reference_masks(segment, hu, [["air"], ["dense", "air"]])
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0].tolist() == [[0, 1], [0, 0]] and out[0, 1].tolist() == [[1, 1], [0, 0]]
    data, affine, modality = seen[0]
    assert data.shape == (2, 2, 1) and np.array_equal(data[:, :, 0], hu[0, 0]) and modality == "CT"
    assert np.array_equal(affine, np.eye(4))
    with pytest.raises(ValueError, match=r"\['vessel'\] are not labels"):
        reference_masks(segment, hu, [["vessel"]])


def test_a_backend_that_finds_the_ground_truth_scores_dice_one(shards, tmp_path, monkeypatch):
    """The wiring end to end: a backend answering each test slice's own lung mask gives Dice 1, HD95 0."""
    index = read_index(shards)
    rows = select_rows(index, {"split": ["test"]})
    _, _, masks, _ = load_rows(shards, rows, index)
    truth = iter((masks[:, NAMES.index("lungs")] > 0).astype(np.int16))

    class Oracle:
        def segment(self, image, modality):
            return Segmentation(type(image)(next(truth)[:, :, None], image.affine), {1: "lung"})

    monkeypatch.setattr("medsynth.masks.backend.make_segmenter", lambda cfg: Oracle())
    ref = {"segmenter": "m", "structures": {"lungs": ["lung"]}, "paper_row": "M (reference)"}
    record = run_reference(shards, "lungtask", "r", _downstream({"r": ref}), {"segmenters": {"m": {"backend": "x"}}},
                           tmp_path / "r.json", {}, 32, {"ct_hu_range": HU_RANGE})
    assert record["status"] == "computed" and record["n_test"] == len(rows) == 2
    assert record["mdsc"] == pytest.approx(1.0) and record["mhd95"] == pytest.approx(0.0)
    assert record["hd95_unit"] == "pixel" and record["channels_learned"] == ["lungs"]
    assert record["estimates"]["mdsc"]["value"] == pytest.approx(1.0)
    assert (tmp_path / "r.json").is_file()


def _medpseg_checkpoint(path) -> str:
    torch.manual_seed(0)
    net = MedPSegNet().eval()
    torch.save({"state_dict": {CHECKPOINT_PREFIX + k: v for k, v in net.state_dict().items()},
                "hyper_parameters": {"expand_bifpn": "upsample", "deep_supervision": True}}, path)
    return str(path)


def test_medpseg_scores_the_test_slices_or_says_its_weights_are_missing(shards, tmp_path):
    ref = {"segmenter": "opacities", "structures": {"lungs": ["lung", "ground_glass_opacity", "consolidation"]},
           "window": [-1350, 150], "paper_row": "MedPSeg (reference)"}
    masks = {"segmenters": {"opacities": {"backend": "medpseg", "medpseg": {"checkpoint": None}}}}
    missing = run_reference(shards, "lungtask", "medpseg", _downstream({"medpseg": ref}), masks,
                            tmp_path / "missing.json", {}, 32, {"ct_hu_range": HU_RANGE})
    assert missing["status"].startswith("unavailable: MEDPSeg weights are not configured")
    ckpt = _medpseg_checkpoint(tmp_path / "poly_medseg_25d_fix.ckpt")
    masks["segmenters"]["opacities"]["medpseg"] = {"checkpoint": ckpt, "batch_size": 1}
    record = run_reference(shards, "lungtask", "medpseg", _downstream({"medpseg": ref}), masks,
                           tmp_path / "medpseg.json", {}, 32, {"ct_hu_range": HU_RANGE})
    assert record["status"] == "computed" and record["backend"] == "medpseg" and record["n_test"] == 2
    assert 0.0 <= record["mdsc"] <= 1.0 and len(record["per_sample"]["dice"]["lungs"]) == 2
    table = medsyn2_table5({"semiseg.real": _trained(), "reference:medpseg": record,
                            "reference:other": missing}, "config/paper_reported",
                           {"medpseg": "MedPSeg (reference)", "other": "Other (reference)"})
    rows = table.set_index("paper training_data")
    dice = rows.loc["MedPSeg (reference)", "dice (%)"]
    assert float(getattr(dice, "value", dice)) == pytest.approx(100 * record["mdsc"])
    assert rows.loc["MedPSeg (reference)", "paper dice (%)"] == 65.2
    assert rows.loc["MedPSeg (reference)", "n_images"] == "pretrained"
    assert rows.loc["Other (reference)", "dice (%)"] == "unavailable: MEDPSeg weights are not configured"
    assert rows.loc["Inf-Net (reference)", "dice (%)"] == NO_REFERENCE
    assert rows.loc["Inf-Net (reference)", "paper dice (%)"] == 62.41
    assert list(rows.index) == ["real", "MedPSeg (reference)", "Other (reference)", "Inf-Net (reference)"]


def _trained() -> dict:
    return {"n_train_real": 50, "n_train_synthetic": 0, "steps": 3, "n_test": 2, "mdsc": 0.5, "mhd95": 4.0,
            "hd95_unit": "pixel", "mean": {"jaccard": 0.25, "asd": 2.0}}
