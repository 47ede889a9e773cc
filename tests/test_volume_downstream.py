"""MAISI-v2's downstream tumour segmentation on the 3D path (rule volume_downstream): the 3D segmenter, its patches,
the per-case Dice, the task / setting selection, the generated volumes of real_synth and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medsynth.downstream import (
    VolumePatchStep,
    case_dice,
    load_volume_segmenter,
    patch_shape,
    predict_volumes,
    train_volume_segmenter,
)
from medsynth.evaluation import run_volume_downstream
from medsynth.io.generated import write_generated
from medsynth.io.trainsets import write_shard
from medsynth.train.config import TrainOutputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["liver", "tumor"]
SIZE = 16
TINY = {"type": "segresnet", "params": {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}}
#: a quick recipe: whole 16^3 volumes, 60 steps, no periodic checkpoints, no progress bar
QUICK = {"model": TINY, "steps": 60, "batch_size": 2, "lr": 1e-2, "weight_decay": 0.0, "checkpoint_every": 0,
         "progress": False, "log_every": 5, "threads": 1, "seed": 0}
STATISTICS = {"bootstrap": {"resamples": 50}}
TASK = {"roi": "tumor", "select": {"dataset": ["ds_a"]}}


def blob_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark noisy volume in [-1, 1] with a bright ball (the tumour) inside a mid-grey one (the liver)."""
    grid = np.stack(np.mgrid[:SIZE, :SIZE, :SIZE]).astype(np.float32)
    centre = rng.uniform(5, SIZE - 5, 3)
    dist = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    tumour, liver = dist < rng.uniform(2.5, 3.5), dist < 5
    image = np.where(tumour, 0.7, np.where(liver, -0.1, -0.7)) + rng.normal(0, 0.08, tumour.shape)
    return np.clip(image, -1, 1)[None].astype(np.float32), np.stack([liver, tumour]).astype(np.uint8)


def write_volume_shards(root: Path, per_dataset: int = 6, names: list[str] = NAMES) -> list[str]:
    """Two datasets (ds_a, ds_b) of ``per_dataset`` volumes each, the last two of each in the test split, one shard
    per dataset; one patient per volume. Returns the shards' files."""
    rng = np.random.default_rng(0)
    files = []
    for k, dataset in enumerate(("ds_a", "ds_b")):
        samples = []
        for i in range(per_dataset):
            image, masks = blob_volume(rng)
            row = {"case_id": f"{dataset}-{i}", "patient_id": f"{dataset}-p{i}", "dataset": dataset,
                   "split": "test" if i >= per_dataset - 2 else "train", "modality": "CT", "slice": -1,
                   "organs": json.dumps(names)}
            samples.append((row, image, masks[:len(names)]))
        stem = root / f"shard-{k:04d}"
        write_shard(samples, list(names), stem.with_suffix(".safetensors"), stem.with_suffix(".csv"))
        files += [str(stem.with_suffix(".safetensors")), str(stem.with_suffix(".csv"))]
    return files


def write_synthetic(root: Path, shards: list[str], cases: list[str], names: list[str] = NAMES) -> tuple[str, str]:
    """A generated set in volume_sample's format: one noisy copy of each real volume of ``cases`` with its masks."""
    from medsynth.io.trainsets import load_rows, read_index

    index = read_index(shards)
    positions = np.flatnonzero(index["case_id"].isin(cases).to_numpy())
    rows, images, masks, shard_names = load_rows(shards, positions, index)
    images = np.clip(images + np.random.default_rng(1).normal(0, 0.05, images.shape), -1, 1).astype(np.float32)
    keep = [shard_names.index(n) for n in names]
    tensors, csv = root / "train.safetensors", root / "train.csv"
    write_generated(tensors, images, masks[:, keep] > 0, names, "euler-2")
    table = rows[["case_id", "patient_id", "modality", "split", "slice", "organs"]].reset_index(drop=True)
    table.assign(sample=range(len(table))).to_csv(csv, index=False)
    return str(tensors), str(csv)


def outputs(root: Path) -> TrainOutputs:
    return TrainOutputs.declared(root / "final", root / "loss_curve.csv", root / "train_config.json")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return write_volume_shards(tmp_path_factory.mktemp("volume_shards"))


@pytest.fixture(scope="module")
def real_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("real_run")
    record = run_volume_downstream(shards, None, "liver_tumor", TASK, "real", QUICK, outputs(out),
                                   out / "evaluation.json", statistics=STATISTICS)
    return out, record


def test_case_dice_by_hand():
    """Both empty: 1; exactly one empty: 0; else 2|P & R| / (|P| + |R|) over the case's voxels."""
    pred = np.zeros((4, 1, 2, 2, 2), bool)
    ref = np.zeros_like(pred)
    pred[1, 0, 0, 0, 0] = True                          # case 1: reference empty, prediction not
    ref[2, 0, 1, 1, 1] = True                           # case 2: prediction empty, reference not
    pred[3, 0, 0, 0, :] = True                          # case 3: |P| = 2, |R| = 3, |P & R| = 1
    ref[3, 0, 0, 0, 0] = ref[3, 0, 1, 0, 0] = ref[3, 0, 1, 1, 0] = True
    assert np.allclose(case_dice(pred, ref), [1.0, 0.0, 0.0, 2 * 1 / (2 + 3)])
    with pytest.raises(ValueError, match="shape"):
        case_dice(pred, ref[:, :, :1])


def test_patches_are_clamped_and_centred_on_the_roi():
    """patch_size is clamped to the volume; pos_fraction 1 puts an ROI voxel in every patch; the generator decides."""
    assert patch_shape(None, (16, 12, 8)) == (16, 12, 8)
    assert patch_shape(10, (16, 12, 8)) == (10, 10, 8)
    assert patch_shape([4, 20, 6], (16, 12, 8)) == (4, 12, 6)
    with pytest.raises(ValueError, match="patch_size"):
        patch_shape([4, 4], (16, 12, 8))
    labels = torch.zeros(3, 1, 16, 16, 16)
    labels[:, 0, 13, 1, 14] = 1  # one ROI voxel near a corner
    images = torch.randn(3, 1, 16, 16, 16)
    step = VolumePatchStep(6, 1.0, 1.0, 1.0)
    x, y = step.patches(images, labels, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 1, 6, 6, 6) and bool((y.flatten(1).sum(1) == 1).all())
    again = step.patches(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(x, again[0])
    anywhere = VolumePatchStep(6, 0.0, 1.0, 1.0).patches(images, labels, torch.Generator().manual_seed(0))[1]
    assert anywhere.sum() < 3  # without positive crops the one voxel is rarely inside


def test_real_setting_learns_the_blobs_of_its_task(real_run, shards):
    """(a) the loss falls and the Dice beats the trivial predictors; (d) only the task's dataset is used."""
    out, record = real_run
    assert record == json.loads((out / "evaluation.json").read_text())
    assert (record["task"], record["setting"], record["roi"]) == ("liver_tumor", "real", "tumor")
    assert (record["n_train_real"], record["n_train_synthetic"], record["n_test"]) == (4, 0, 2)
    assert record["test_cases"] == ["ds_a-4", "ds_a-5"]
    curve = pd.read_csv(out / "loss_curve.csv")
    assert len(curve) == 60 and curve["loss"].iloc[-5:].mean() < 0.6 * curve["loss"].iloc[:3].mean()
    assert record["dice"] == pytest.approx(np.mean(record["case_dice"])) and record["dice"] > 0.6
    # the trivial predictors: nothing (Dice 0) and everything
    from medsynth.io.trainsets import load_rows, read_index

    index = read_index(shards)
    _, _, masks, _ = load_rows(shards, np.flatnonzero(index["case_id"].isin(record["test_cases"])), index)
    tumour = masks[:, 1:2] > 0
    assert record["dice"] > case_dice(np.ones_like(tumour), tumour).mean() + 0.4
    est = record["estimates"]
    assert set(est) == {"dice", "dice/tumor", "mdsc"} and est["dice"]["value"] == pytest.approx(record["dice"])
    assert len(record["bootstrap"]["replicates"]["dice"]) == 50
    model = load_volume_segmenter(out / "final")
    pred = predict_volumes(model, load_rows(shards, np.flatnonzero(index["case_id"] == "ds_a-4"), index)[1],
                           None, 1, 0.5)
    assert case_dice(pred, tumour[:1])[0] == pytest.approx(record["case_dice"][0])


def test_real_synth_adds_the_generated_volumes_and_resumes(shards, tmp_path):
    """(c) every generated volume joins the training set; (f) a rerun resumes from the last checkpoint, same record."""
    train_cases = [f"ds_a-{i}" for i in range(4)]
    synthetic = write_synthetic(tmp_path, shards, train_cases)
    cfg = {**QUICK, "steps": 4, "patch_size": 8, "sw_overlap": 0.25}
    record = run_volume_downstream(shards, synthetic, "liver_tumor", TASK, "real_synth", cfg, outputs(tmp_path / "run"),
                                   tmp_path / "evaluation.json", statistics=STATISTICS)
    assert (record["n_train_real"], record["n_train_synthetic"], record["patch_size"]) == (4, 4, [8, 8, 8])
    saved = json.loads((tmp_path / "run" / "final" / "segmenter.json").read_text())
    assert saved["meta"]["n_train"] == 8
    shutil.rmtree(tmp_path / "run" / "final")
    again = run_volume_downstream(shards, synthetic, "liver_tumor", TASK, "real_synth", cfg, outputs(tmp_path / "run"),
                                  tmp_path / "evaluation.json", statistics=STATISTICS)
    assert again["case_dice"] == record["case_dice"] and again["steps"] == 4
    # a generated volume of a case that is not a training volume of the task
    foreign = write_synthetic(tmp_path / "foreign", shards, train_cases + ["ds_b-0"])
    with pytest.raises(ValueError, match="not training volumes of task 'liver_tumor'.*ds_b-0"):
        run_volume_downstream(shards, foreign, "liver_tumor", TASK, "real_synth", cfg, outputs(tmp_path / "f"),
                              tmp_path / "f.json")
    no_roi = write_synthetic(tmp_path / "no_roi", shards, train_cases, names=["liver"])
    with pytest.raises(ValueError, match=r"tasks\.liver_tumor\.roi 'tumor'.*generated set"):
        run_volume_downstream(shards, no_roi, "liver_tumor", TASK, "real_synth", cfg, outputs(tmp_path / "g"),
                              tmp_path / "g.json")
    assert not (tmp_path / "f.json").exists() and not (tmp_path / "g.json").exists()


def test_training_resumes_exactly(tmp_path):
    """A run killed after its step-2 checkpoint ends with the uninterrupted run's weights (random patches included)."""
    rng = np.random.default_rng(3)
    volumes = [blob_volume(rng) for _ in range(4)]
    images = np.stack([v[0] for v in volumes])
    labels = np.stack([v[1][1:2] for v in volumes])
    cfg = {**QUICK, "steps": 4, "checkpoint_every": 2, "patch_size": 8, "pos_fraction": 0.5}
    full, _ = train_volume_segmenter(images, labels, cfg, tmp_path / "full", fingerprint="x")
    train_volume_segmenter(images, labels, cfg, tmp_path / "resumed", fingerprint="x")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000004")
    shutil.rmtree(tmp_path / "resumed" / "segmenter")
    resumed, result = train_volume_segmenter(images, labels, cfg, tmp_path / "resumed", fingerprint="x")
    assert result.resumed_from is not None and result.resumed_from.name == "step-000002"
    assert result.step == 4 and len(result.history) == 2
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    other, result = train_volume_segmenter(images, labels, cfg, tmp_path / "resumed", fingerprint="other inputs")
    assert result.resumed_from is None  # checkpoints of other inputs are not continued


def test_clear_errors(shards, tmp_path):
    """(e) a missing roi channel names the key; no volume of a selection, or an unknown setting, is an error."""
    out = outputs(tmp_path / "run")
    with pytest.raises(ValueError, match=r"volumes\.downstream\.tasks\.lung_tumor\.roi 'lung_lesion'.*liver"):
        run_volume_downstream(shards, None, "lung_tumor", {"roi": "lung_lesion"}, "real", QUICK, out, tmp_path / "e")
    with pytest.raises(ValueError, match=r"task 'x'.*train_select.*ds_c.*keeps no volume"):
        run_volume_downstream(shards, None, "x", {"roi": "tumor", "select": {"dataset": ["ds_c"]}}, "real", QUICK,
                              out, tmp_path / "e")
    with pytest.raises(ValueError, match=r"test_select.*keeps no volume"):
        run_volume_downstream(shards, None, "x", TASK, "real", {**QUICK, "test_select": {"split": ["val"]}}, out,
                              tmp_path / "e")
    with pytest.raises(ValueError, match="real_aug"):
        run_volume_downstream(shards, None, "x", TASK, "real_aug", QUICK, out, tmp_path / "e")
    with pytest.raises(ValueError, match="needs a generated set"):
        run_volume_downstream(shards, None, "x", TASK, "real_synth", QUICK, out, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_the_task_reads_the_rule_job(shards, tmp_path):
    """The rule's task: job.input shards (+ synthetic, synthetic_index), params cfg / task_cfg / setting /
    statistics, wildcard task, outputs final / curve / train_config / evaluation."""
    from types import SimpleNamespace

    from medsynth.tasks.volumes import volume_downstream

    synthetic = write_synthetic(tmp_path, shards, [f"ds_a-{i}" for i in range(4)])
    job = SimpleNamespace(
        input=SimpleNamespace(shards=shards, synthetic=synthetic[0], synthetic_index=synthetic[1]),
        output=SimpleNamespace(final=str(tmp_path / "run" / "final"), curve=str(tmp_path / "run" / "loss_curve.csv"),
                               train_config=str(tmp_path / "run" / "train_config.json"),
                               evaluation=str(tmp_path / "run" / "evaluation.json")),
        params=SimpleNamespace(cfg={**QUICK, "steps": 2}, task_cfg=TASK, setting="real_synth", statistics=STATISTICS),
        wildcards=SimpleNamespace(task="liver_tumor", tumour_setting="real_synth"), resources=SimpleNamespace())
    assert volume_downstream.seed_of(job) == 0
    volume_downstream(job)
    record = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert (record["setting"], record["n_train_synthetic"], record["steps"]) == ("real_synth", 4, 2)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert len(pd.read_csv(tmp_path / "run" / "loss_curve.csv")) == 2
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["steps"] == 2
