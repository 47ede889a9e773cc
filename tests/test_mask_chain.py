"""Chained pseudo-masks (masks.segmenters.<name>.base on any backend, optionally `paint`), the registry entry of
TotalSegmentator's effusion and nodule tasks, and MedSyn2's wiring of them (config/studies/medsyn2*.yaml)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medsynth.masks.conditions import ConditionSpec
from medsynth.masks.overlay import DATASET_LABEL_OFFSET, chain_offset, painted_only
from medsynth.masks.stage import chain_depth, check_routing, masks_shard
from medsynth.masks.types import Segmentation

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from paper_dag import study_config  # noqa: E402  (tests/paper_dag.py: a study config with its `extends`)

SHAPE = (24, 20, 16)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
#: stand-ins for three TotalSegmentator tasks: block of each class id (x0, x1) along the first axis
BLOCKS = {
    "total": {10: (0, 12), 13: (12, 24), 51: (20, 24)},             # two lobes and the heart
    "pleural_pericard_effusion": {1: (0, 24), 2: (2, 4), 3: (20, 22)},  # lung_pleural everywhere
    "lung_nodules": {1: (0, 24), 2: (8, 9)},                         # lung everywhere, one nodule slab
}
#: the chain under test: nodules over effusion over total, each painting its abnormalities only
SEGMENTERS = {
    "total": {"backend": "totalsegmentator", "totalsegmentator": {"task": "total"}},
    "effusion": {"backend": "totalsegmentator", "base": "total", "paint": ["pleural_effusion", "pericardial_effusion"],
                 "totalsegmentator": {"task": "pleural_pericard_effusion"}},
    "nodules": {"backend": "totalsegmentator", "base": "effusion", "paint": ["lung_nodules"],
                "totalsegmentator": {"task": "lung_nodules"}},
}
CONDITIONS = [{"name": "lobe", "structures": ["lung_*_lobe_*"], "boundary": True},
              {"name": "heart", "structures": ["heart"]},
              {"name": "pleural_effusion", "structures": ["pleural_effusion"]},
              {"name": "pericardial_effusion", "structures": ["pericardial_effusion"]},
              {"name": "lung_nodule", "structures": ["lung_nodules"]}]


class StandInSegmenter:
    """A TotalSegmentator task's class map with fixed blocks of labels (no weights, no network)."""

    name = "stand_in"

    def __init__(self, task: str):
        from totalsegmentator.map_to_binary import class_map

        self.task = task
        self.names = {int(k): str(v) for k, v in class_map[task].items()}

    def segment(self, image: nib.Nifti1Image, modality: str) -> Segmentation:
        """Blocks of ``BLOCKS[task]`` on the image's grid, later ids over earlier ones."""
        labels = np.zeros(image.shape, np.uint8)
        for label, (x0, x1) in BLOCKS[self.task].items():
            labels[x0:x1] = label
        return Segmentation(nib.Nifti1Image(labels, image.affine), self.names)


@pytest.fixture()
def stand_ins(monkeypatch):
    """Every segmenter the masks stage builds is a :class:`StandInSegmenter` of its configured task."""
    import medsynth.masks.stage as stage

    monkeypatch.setattr(stage, "make_segmenter", lambda cfg: StandInSegmenter(cfg["totalsegmentator"]["task"]))


def _registered(tmp_path: Path) -> pd.DataFrame:
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), AFFINE), str(image))
    return pd.DataFrame([{"case_id": "c1", "patient_id": "p1", "dataset": "ct_rate", "modality": "CT",
                          "split": "train", "status": "ok", "registered_path": str(image), "registered_label_path": ""}])


def test_a_chain_paints_each_layer_with_the_offset_of_its_depth(tmp_path, stand_ins):
    specs = [ConditionSpec.from_config(c) for c in CONDITIONS]
    table = masks_shard(_registered(tmp_path), tmp_path / "masks", SEGMENTERS, {"CT": "nodules"}, specs,
                        progress=False).set_index("case_id")
    row = table.loc["c1"]
    assert row["status"] == "ok" and row["segmenter"] == "nodules" and row["unknown_label_ids"] == ""
    labels = np.asarray(nib.load(row["labels_path"]).dataobj)
    off = DATASET_LABEL_OFFSET
    expected = np.zeros(SHAPE, np.int16)
    expected[0:12], expected[12:24], expected[20:24] = 10, 13, 51       # total
    expected[2:4], expected[20:22] = off + 2, off + 3                    # effusion, depth 1: + 1000
    expected[8:9] = 2 * off + 2                                          # nodules, depth 2: + 2000
    assert (labels == expected).all()  # lung_pleural and lung (class 1 of each task) left out by `paint`
    total = StandInSegmenter("total").names
    assert set(json.loads(row["structures"])) == {total[10], total[13], total[51], "pleural_effusion",
                                                  "pericardial_effusion", "lung_nodules"}
    assert total[51] == "heart" and total[10].startswith("lung_") and total[13].startswith("lung_")
    conditions = np.asarray(nib.load(row["conditions_path"]).dataobj)
    names = [c["name"] for c in CONDITIONS]
    assert (conditions[..., names.index("pleural_effusion")].astype(bool) == (expected == off + 2)).all()
    assert (conditions[..., names.index("pericardial_effusion")].astype(bool) == (expected == off + 3)).all()
    assert (conditions[..., names.index("lung_nodule")].astype(bool) == (expected == 2 * off + 2)).all()
    assert (conditions[..., names.index("heart")].astype(bool) == (expected == 51)).all()
    assert conditions[..., names.index("lobe")].any() and float(row["ml_lung_nodule"]) > 0


def test_without_paint_every_class_is_painted_and_a_segmenter_without_base_is_unchanged(tmp_path, stand_ins):
    segmenters = {**SEGMENTERS, "effusion": {**SEGMENTERS["effusion"], "paint": None}}
    specs = [ConditionSpec.from_config(c) for c in CONDITIONS]
    table = masks_shard(_registered(tmp_path), tmp_path / "a", segmenters, {"CT": "effusion"}, specs,
                        progress=False).set_index("case_id")
    labels = np.asarray(nib.load(table.loc["c1", "labels_path"]).dataobj)
    assert set(np.unique(labels)) == {DATASET_LABEL_OFFSET + i for i in (1, 2, 3)}  # lung_pleural covers the lobes
    table = masks_shard(_registered(tmp_path), tmp_path / "b", SEGMENTERS, {"CT": "total"}, specs,
                        progress=False).set_index("case_id")
    assert set(np.unique(np.asarray(nib.load(table.loc["c1", "labels_path"]).dataobj))) == {10, 13, 51}


def test_painted_only_keeps_the_named_classes():
    data = np.array([[1, 2], [3, 0]], np.uint8)
    own = Segmentation(nib.Nifti1Image(data, np.eye(4)), {1: "lung_pleural", 2: "pleural_effusion",
                                                          3: "pericardial_effusion"})
    kept = painted_only(own, ["*_effusion"])
    assert np.asarray(kept.labels.dataobj).tolist() == [[0, 2], [3, 0]]
    assert kept.names == {2: "pleural_effusion", 3: "pericardial_effusion"}
    assert painted_only(own, None) is own
    with pytest.raises(ValueError, match="match none"):
        painted_only(own, ["nodule"])
    assert chain_offset(1) == DATASET_LABEL_OFFSET and chain_offset(2) == 2 * DATASET_LABEL_OFFSET
    with pytest.raises(ValueError):
        chain_offset(0)


def test_chains_are_checked_up_front():
    assert {n: chain_depth(SEGMENTERS, n) for n in SEGMENTERS} == {"total": 0, "effusion": 1, "nodules": 2}
    check_routing(SEGMENTERS, {})
    cycle = {"a": {"backend": "classical", "base": "b"}, "b": {"backend": "classical", "base": "a"}}
    with pytest.raises(ValueError, match="cycle"):
        check_routing(cycle, {})
    with pytest.raises(ValueError, match="paint: only a segmenter with a base"):
        check_routing({"t": {"backend": "classical", "paint": ["lungs"]}}, {})
    with pytest.raises(ValueError, match="reads the dataset's label maps too"):
        check_routing({"d": {"backend": "dataset", "class_map": "total"},
                       "e": {"backend": "totalsegmentator", "base": "d"}}, {})
    # a dataset map on top of a chain: its ids + 1000 x 3
    on_top = {**SEGMENTERS, "labels": {"backend": "dataset", "class_map": "total", "base": "nodules"}}
    check_routing(on_top, {"msd": "labels"})
    assert chain_depth(on_top, "labels") == 3


# -- the registry entry and the MedSyn2 studies ------------------------------------------------------------


@pytest.mark.parametrize("task", ["pleural_pericard_effusion", "lung_nodules"])
def test_registry_entry_holds_every_model_each_task_reads(task, tmp_path):
    from medsynth.masks.totalseg import TotalSegmentatorSegmenter
    from medsynth.masks.types import WeightsUnavailable
    from medsynth.weights.registry import load_models

    entry = load_models(REPO / "config" / "models.yaml")["totalsegmentator_thorax"]
    assert entry["kind"] == "http" and entry["access"] == "public" and entry["layout"] == "nnunet_results"
    files = {f["path"]: f for f in entry["files"]}
    segmenter = TotalSegmentatorSegmenter(task=task, fast=False, weights_dir=tmp_path)
    models = segmenter.required_models()
    assert {m.task_id for m in models} == {298, {"pleural_pericard_effusion": 315, "lung_nodules": 913}[task]}
    for model in models:  # the task's model and the 6 mm `total` model its lobe crop runs
        item = files[f"{model.dataset_folder()}.zip"]
        assert item["url"] == model.url() and item["extract"] is True
    with pytest.raises(WeightsUnavailable, match="Dataset298_TotalSegmentator_total_6mm"):
        segmenter.check_weights()


@pytest.mark.parametrize("name", ["medsyn2", "medsyn2_smoke"])
def test_medsyn2_studies_validate_and_size_the_generators_by_their_channels(name):
    from snakemake.utils import validate
    from totalsegmentator.map_to_binary import class_map

    from medsynth.masks.medpseg import LABELS as MEDPSEG_LABELS
    from medsynth.weights.refs import resolve_pretrained
    from medsynth.weights.registry import load_models

    config = study_config(REPO / "config" / "studies" / f"{name}.yaml")
    validate(config, str(REPO / "config" / "schema.yaml"))
    masks = config["masks"]
    check_routing(masks["segmenters"], masks.get("by_dataset") or {})
    channels = [c["name"] for c in masks["conditions"]]
    assert channels == ["lobe", "airway", "heart", "pleural_effusion", "pericardial_effusion", "nodule", "ggo",
                        "consolidation"]
    latent = config["volumes"]["vae"]["model"]["latent_channels"]
    for params in (config["volumes"]["generator"]["backbone"]["params"], config["generator"]["backbone"]["params"],
                   config["architectures"]["dit"]["params"]):
        assert params["in_channels"] == latent + len(channels)
    chain = {n: chain_depth(masks["segmenters"], n) for n in ("total", "effusion", "nodules", "opacities")}
    assert chain == {"total": 0, "effusion": 1, "nodules": 2, "opacities": 3}
    for seg in ("effusion", "nodules"):  # every painted pattern is a class of the segmenter's task
        task = masks["segmenters"][seg]["totalsegmentator"]["task"]
        assert set(masks["segmenters"][seg]["paint"]) <= set(class_map[task].values())
    assert set(masks["segmenters"]["opacities"]["paint"]) <= set(MEDPSEG_LABELS.values())
    pathologies = config["readers"]["pathologies"]
    assert set(pathologies) <= set(channels)
    if name == "medsyn2":
        assert masks["by_modality"]["CT"] == "opacities" and pathologies == channels[3:]
        assert config["readers"]["real"] == config["readers"]["synthetic"] == 15
        used = resolve_pretrained(copy.deepcopy(config), load_models(REPO / "config" / "models.yaml"), "w", REPO)
        assert {"totalsegmentator", "totalsegmentator_thorax", "medpseg"} <= set(used["masks"])
    else:
        assert pathologies == []  # the classical smoke masks have no abnormality to draw by


def test_release_zips_unpacked_into_folders_of_their_own_name_are_found(tmp_path):
    """The weights rule unpacks <stem>.zip into files/<stem>/, and each zip holds its folder <stem>/ at the top."""
    from medsynth.masks.totalseg import TotalSegmentatorSegmenter, linked_results

    weights = tmp_path / "files"
    segmenter = TotalSegmentatorSegmenter(task="pleural_pericard_effusion", fast=False, weights_dir=weights)
    models = segmenter.required_models()
    for i, model in enumerate(models):  # the task's model nested, the crop model flat
        root = weights / model.dataset_folder() if i == 0 else weights
        for path in model.required_files(root):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    assert segmenter.check_weights() == weights
    with linked_results(weights, models) as results:
        assert results != weights
        for model in models:
            assert all(p.is_file() for p in model.required_files(results))
    assert not results.exists()
    flat = TotalSegmentatorSegmenter(task="pleural_pericard_effusion", fast=False, weights_dir=tmp_path / "flat")
    for model in models:
        for path in model.required_files(tmp_path / "flat"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    with linked_results(flat.check_weights(), models) as results:
        assert results == tmp_path / "flat"  # nothing nested: TotalSegmentator reads the folder itself
