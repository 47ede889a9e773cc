"""Downstream tasks on other data (MedSyn2 Table 5 on SemiSeg): setting names, the task's keys, the learned
channels, the re-windowing of synthetic CT slices, the synthetic count, `present` selections and the mask QC
that checks some modalities only. Values worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medsynth.downstream import compose_setting, keep_channels, task_config, window_to_unit
from medsynth.io.trainsets import select_rows
from medsynth.masks.conditions import ConditionSpec, condition_masks
from medsynth.names import parse_setting


def test_setting_names_parse_into_task_kind_and_model():
    assert parse_setting("real") == (None, "real", None)
    assert parse_setting("real_synth-victr@1") == (None, "real_synth", "victr@1")
    assert parse_setting("semiseg.real") == ("semiseg", "real", None)
    assert parse_setting("semiseg.synth_only-medsyn2") == ("semiseg", "synth_only", "medsyn2")


def test_a_task_sets_its_keys_over_the_section():
    cfg = {"train_select": {"split": ["train"]}, "channels": None, "seed": 3,
           "tasks": {"semiseg": {"settings": ["real"], "train_select": {"split": ["downstream_train"]},
                                 "channels": ["ggo"]}}}
    merged = task_config(cfg, "semiseg")
    assert merged["train_select"] == {"split": ["downstream_train"]} and merged["channels"] == ["ggo"]
    assert merged["seed"] == 3 and "settings" not in {k for k in merged if k != "tasks"}
    assert task_config(cfg, None)["channels"] is None
    with pytest.raises(ValueError, match="no downstream task 'other'.*semiseg"):
        task_config(cfg, "other")


def test_keep_channels_picks_by_name_in_the_asked_order():
    masks = np.arange(2 * 3 * 1 * 1).reshape(2, 3, 1, 1)
    kept, names = keep_channels(masks, ["lobe", "ggo", "heart"], ["heart", "ggo"])
    assert names == ["heart", "ggo"] and kept[:, :, 0, 0].tolist() == [[2, 1], [5, 4]]
    same, all_names = keep_channels(masks, ["lobe", "ggo", "heart"], None)
    assert same is masks and all_names == ["lobe", "ggo", "heart"]
    with pytest.raises(ValueError, match=r"\['liver'\] are not condition channels"):
        keep_channels(masks, ["lobe", "ggo", "heart"], ["liver"])


def test_window_to_unit_by_hand():
    # model scale [-1024, 1024] HU; window [-1350, 150]: -1024 HU -> 2 * 326 / 1500 - 1, 0 HU -> 2 * 1350 / 1500 - 1,
    # 512 HU (x = 0.5) -> clipped to 150 -> 1
    x = np.array([-1.0, 0.0, 0.5], np.float32)
    out = window_to_unit(x, (-1024, 1024), (-1350, 150))
    np.testing.assert_allclose(out, [2 * 326 / 1500 - 1, 2 * 1350 / 1500 - 1, 1.0], rtol=0, atol=1e-6)
    # the soft-tissue window [-125, 225]: 50 HU (x = 50 / 1024) -> the window's centre 0
    assert abs(float(window_to_unit(np.float32(50 / 1024), (-1024, 1024), (-125, 225)))) < 1e-6
    with pytest.raises(ValueError, match="must rise"):
        window_to_unit(x, (-1024, 1024), (150, -1350))


def test_synthetic_count_fixes_both_synthetic_settings():
    real = (np.zeros((3, 1, 4, 4), np.float32), np.zeros((3, 1, 4, 4), np.float32))
    synth = (np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((5, 1, 4, 4), np.float32),
             np.ones((5, 1, 4, 4), np.float32))
    _, _, combined = compose_setting("real_synth", real, synth, synthetic_fraction=0.3, synthetic_count=4)
    assert (combined["n_real"], combined["n_synthetic"]) == (3, 4)
    images, _, only = compose_setting("synth_only", real, synth, synthetic_count=2)
    assert only["n_synthetic"] == 2 and sorted(images[:, 0, 0, 0].tolist()) == [0.0, 1.0]  # the first two
    _, _, every = compose_setting("synth_only", real, synth)
    assert every["n_synthetic"] == 5
    with pytest.raises(ValueError, match="synthetic_count 6"):
        compose_setting("synth_only", real, synth, synthetic_count=6)
    with pytest.raises(ValueError, match="synthetic_count 6"):
        compose_setting("real_synth", real, synth, synthetic_count=6)


def test_present_keeps_the_rows_holding_every_named_channel():
    index = pd.DataFrame({"split": ["train", "train", "train", "test"],
                          "organs": [json.dumps(["lobe", "ggo"]), json.dumps(["lobe"]), json.dumps([]),
                                     json.dumps(["ggo"])]})
    assert select_rows(index, {"present": ["ggo"]}).tolist() == [0, 3]
    assert select_rows(index, {"split": ["train"], "present": ["ggo", "lobe"]}).tolist() == [0]
    with pytest.raises(KeyError, match="organs"):
        select_rows(index.drop(columns="organs"), {"present": ["ggo"]})


def test_mask_qc_checks_the_named_modalities_only():
    labels = np.zeros((4, 4, 1), np.int16)  # a picture without lobes
    lobe = ConditionSpec.from_config({"name": "lobe", "structures": ["lung_*"], "required": True,
                                      "qc_modalities": ["CT"]})
    names = {1: "lung_upper_lobe_left"}
    assert condition_masks(labels, names, [lobe], 0.001, "ct_slice").reasons == []
    assert condition_masks(labels, names, [lobe], 0.001, "CT").reasons == ["empty mask: lobe"]
    every = ConditionSpec.from_config({"name": "lobe", "structures": ["lung_*"], "required": True})
    assert condition_masks(labels, names, [every], 0.001, "ct_slice").reasons == ["empty mask: lobe"]
