"""TotalSegmentator and lungmask backends, run for real on CPU against tiny local checkpoints.

No pretrained weights are needed (or fetched): the tests build checkpoints with the architecture
each tool expects and random weights, in the exact layout each tool reads, and then run the
normal code paths (TotalSegmentator's python API with nnU-Net v2 and its worker processes;
lungmask's LMInferer with its reorientation and post-processing) on small real CT volumes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.masks.backend import WeightsUnavailable

# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def chest_small(ct_lps) -> nib.Nifti1Image:
    """Canonical chest CT crop, 78x56x3 (every 3rd voxel in-plane = 4.5 mm, 3 slices 60 mm apart).

    lungmask resizes every slice to 256x256 and its full U-Net takes ~2.5 s a slice on 2 CPU cores,
    so the slice count, not the in-plane size, sets the cost.
    """
    can = nib.as_closest_canonical(ct_lps)
    small = can.slicer[::3, ::3, 70:190:40]
    return nib.Nifti1Image(np.asarray(small.dataobj), small.affine)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any HTTP request (requests or torch.hub) in this process fails the test."""
    import requests

    calls: list = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests, "post", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return calls


def lungmask_unet(n_classes: int) -> torch.nn.Module:
    """The U-Net lungmask.mask.get_model builds (same constructor arguments), random weights."""
    from lungmask.resunet import UNet

    torch.manual_seed(0)
    return UNet(n_classes=n_classes, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)


def tiny_totalseg_weights(root: Path, task: str = "total", fast: bool = True, background_bias: float = -1e3) -> Path:
    """A TotalSegmentator/nnU-Net v2 results folder for ``task`` with a tiny random PlainConvUNet.

    Layout (what totalsegmentator.nnunet.nnUNetv2_predict -> nnunetv2.get_output_folder reads):
    ``root/<Dataset folder of the task id>/<trainer>__nnUNetPlans__3d_fullres/{dataset.json, plans.json,
    fold_0/checkpoint_final.pth}``. The network is built by the trainer's own
    ``build_network_architecture`` from these plans, so the state dict matches what nnU-Net
    rebuilds at inference; it has len(class_map[task]) + 1 outputs. The background logit gets a
    large negative bias so every voxel receives a foreground label (label mapping is exercised).
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from totalsegmentator.map_to_binary import class_map

    from medsynth.masks.totalseg import TotalSegmentatorSegmenter

    (model,) = TotalSegmentatorSegmenter(task=task, fast=fast).required_models()
    folder = model.trained_model_folder(root)
    spacing = [3.0, 3.0, 3.0]
    dataset_json = {
        "name": model.dataset_folder(),
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: int(k) for k, name in sorted(class_map[task].items())}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    conv3d, inorm = "torch.nn.modules.conv.Conv3d", "torch.nn.modules.instancenorm.InstanceNorm3d"
    plans = {
        "dataset_name": model.dataset_folder(),
        "plans_name": model.plans,
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [30, 101, 122],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3000.0, "mean": 60.0, "median": 50.0, "min": -1024.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 300.0}},
        "configurations": {
            model.configuration: {
                "data_identifier": f"{model.plans}_{model.configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [32, 64, 64],
                "median_image_size_in_voxels": [30, 101, 122],
                "spacing": spacing,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "batch_dice": False,
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 2,
                        "features_per_stage": [4, 8],
                        "conv_op": conv3d,
                        "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
                        "strides": [[1, 1, 1], [2, 2, 2]],
                        "n_conv_per_stage": [1, 1],
                        "n_conv_per_stage_decoder": [1],
                        "conv_bias": True,
                        "norm_op": inorm,
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
            }
        },
    }
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(model.configuration)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    assert n_out == len(class_map[task]) + 1
    trainer = recursive_find_trainer_class_by_name(model.trainer)
    torch.manual_seed(0)
    network = trainer.build_network_architecture(plans_manager, configuration, 1, n_out,
                                                 enable_deep_supervision=False)
    with torch.no_grad():
        network.decoder.seg_layers[-1].bias[0] = background_bias
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    torch.save({"network_weights": network.state_dict(), "trainer_name": model.trainer,
                "init_args": {"plans": plans, "configuration": model.configuration, "fold": 0,
                              "dataset_json": dataset_json},
                "inference_allowed_mirroring_axes": None},
               folder / "fold_0" / "checkpoint_final.pth")
    return root


# ------------------------------------------------------------------ lungmask


@pytest.fixture(scope="module")
def r231_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lungmask") / "r231_random.pth"
    torch.save(lungmask_unet(3).state_dict(), path)
    return path


def test_lungmask_r231_on_input_grid(chest_small, r231_weights):
    from medsynth.masks.lungmask_seg import LungmaskSegmenter

    seg = LungmaskSegmenter(modelpath=r231_weights, batch_size=8).segment(chest_small, "CT")
    assert seg.labels.shape == chest_small.shape
    np.testing.assert_array_equal(seg.labels.affine, chest_small.affine)
    data = np.asarray(seg.labels.dataobj)
    assert data.dtype == np.uint8
    assert set(np.unique(data).tolist()) <= {0, 1, 2}
    assert seg.names == {1: "lung_right", 2: "lung_left"}


def test_lungmask_ltrclobes(chest_small, tmp_path):
    from medsynth.masks.lungmask_seg import LungmaskSegmenter

    path = tmp_path / "lobes_random.pth"
    torch.save(lungmask_unet(6).state_dict(), path)
    seg = LungmaskSegmenter(model="LTRCLobes", modelpath=path, batch_size=8).segment(chest_small, "CT")
    assert seg.labels.shape == chest_small.shape
    np.testing.assert_array_equal(seg.labels.affine, chest_small.affine)
    assert set(np.unique(np.asarray(seg.labels.dataobj)).tolist()) <= set(range(6))
    assert sorted(seg.names) == [1, 2, 3, 4, 5]
    assert seg.names[1] == "lung_upper_lobe_left" and seg.names[4] == "lung_middle_lobe_right"


class _Threshold(torch.nn.Module):
    """Stand-in for the U-Net: class 1 where the (lungmask-normalised) input is above HU 200."""

    def forward(self, x):
        d = (x - (200 + 1024) / 1624) * 1000
        return torch.cat([torch.zeros_like(x), d, torch.full_like(x, -1e6)], dim=1)


def test_lungmask_orientation_round_trip(chest_small, r231_weights):
    """lungmask's LPS reorientation + (z,y,x) output are undone: a threshold 'model' lands on the bone."""
    from medsynth.masks.lungmask_seg import LungmaskSegmenter

    segmenter = LungmaskSegmenter(modelpath=r231_weights, volume_postprocessing=False)
    segmenter.inferer().model = _Threshold()
    labels = np.asarray(segmenter.segment(chest_small, "CT").labels.dataobj) == 1
    truth = np.asarray(chest_small.dataobj) > 200

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert truth.sum() > 100
    assert dice(labels, truth) > 0.7
    assert dice(labels, truth[::-1]) < 0.5 * dice(labels, truth)  # a left-right flip would show
    assert dice(labels, truth[:, ::-1]) < 0.5 * dice(labels, truth)  # as would an anterior-posterior one


def test_lungmask_weights_missing(chest_small, tmp_path, monkeypatch, no_network):
    from medsynth.masks.lungmask_seg import LungmaskSegmenter, hub_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert hub_cache_path("R231") == tmp_path / "torch" / "hub" / "checkpoints" / "unet_r231-d5d2fc3d.pth"
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as err:
        LungmaskSegmenter().segment(chest_small, "CT")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "masks.segmenters[].lungmask.modelpath" in message and "TORCH_HOME" in message
    assert "https://github.com/JoHof/lungmask/releases/download/v0.0/unet_r231-d5d2fc3d.pth" in message
    with pytest.raises(WeightsUnavailable, match="modelpath"):
        LungmaskSegmenter(modelpath=tmp_path / "nope.pth").inferer()
    assert no_network == []


def test_lungmask_uses_hub_cache_without_download(tmp_path, monkeypatch, r231_weights, no_network):
    from medsynth.masks.lungmask_seg import LungmaskSegmenter, hub_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = hub_cache_path("R231")
    cached.parent.mkdir(parents=True)
    cached.symlink_to(r231_weights)
    assert LungmaskSegmenter().inferer().model.last.out_channels == 3
    with pytest.raises(ValueError, match="output classes"):  # R231 weights are not a lobe model
        LungmaskSegmenter(model="LTRCLobes", modelpath=r231_weights).inferer()
    with pytest.raises(ValueError, match="CT only"):
        LungmaskSegmenter().segment(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), "MR")
    assert no_network == []


# ------------------------------------------------------------------ TotalSegmentator


@pytest.fixture(scope="module")
def totalseg_weights(tmp_path_factory) -> Path:
    return tiny_totalseg_weights(tmp_path_factory.mktemp("totalseg_weights"))


@pytest.fixture
def user_home(tmp_path, monkeypatch) -> Path:
    """A stand-in for ~/.totalsegmentator, so the tests never touch the real one."""
    home = tmp_path / "user_totalseg_home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return home


def test_totalseg_total_fast_runs_on_input_grid(ct_small, totalseg_weights, user_home, no_network):
    from totalsegmentator.map_to_binary import class_map

    from medsynth.masks.totalseg import TotalSegmentatorSegmenter

    threads = torch.get_num_threads()
    seg = TotalSegmentatorSegmenter(weights_dir=totalseg_weights).segment(ct_small, "CT")
    assert seg.labels.shape == ct_small.shape
    np.testing.assert_array_equal(seg.labels.affine, ct_small.affine)
    data = np.asarray(seg.labels.dataobj)
    assert data.dtype == np.uint8
    ids = set(np.unique(data).tolist())
    assert ids and ids <= set(class_map["total"])  # every voxel got a foreground class of the map
    assert seg.names == dict(class_map["total"]) and len(seg.names) == 117
    # offline and quiet: no request, the user's TotalSegmentator home untouched, env restored
    assert no_network == []
    assert not user_home.exists()
    assert os.environ["TOTALSEG_HOME_DIR"] == str(user_home) and "TOTALSEG_WEIGHTS_PATH" not in os.environ
    assert torch.get_num_threads() == threads


def test_totalseg_weights_env_var_and_roi_subset(ct_small, totalseg_weights, user_home, monkeypatch):
    from medsynth.masks.totalseg import TotalSegmentatorSegmenter

    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(totalseg_weights))
    assert TotalSegmentatorSegmenter().check_weights() == totalseg_weights
    # roi_subset makes TotalSegmentator crop with its 6 mm model first: that one is absent here
    roi = TotalSegmentatorSegmenter(roi_subset=["liver", "spleen"])
    assert [m.task_id for m in roi.required_models()] == [297, 298]
    with pytest.raises(WeightsUnavailable, match="Dataset298_TotalSegmentator_total_6mm_1559subj"):
        roi.segment(ct_small, "CT")
    with pytest.raises(ValueError, match="roi_subset"):
        TotalSegmentatorSegmenter(roi_subset=["not_an_organ"])
    with pytest.raises(ValueError, match="MR"):
        TotalSegmentatorSegmenter().segment(ct_small, "MR")


def test_totalseg_missing_weights_raise_fast(ct_small, tmp_path, user_home, no_network):
    from medsynth.masks.totalseg import TotalSegmentatorSegmenter

    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as err:
        TotalSegmentatorSegmenter(weights_dir=tmp_path / "empty").segment(ct_small, "CT")
    assert time.monotonic() - start < 10
    message = str(err.value)
    for needle in ("masks.segmenters[].totalsegmentator.weights_dir", "TOTALSEG_WEIGHTS_PATH",
                   "TOTALSEG_HOME_DIR", "totalseg_download_weights -t total_fast",
                   "https://github.com/wasserth/TotalSegmentator/releases/download/v2.0.0-weights/"
                   "Dataset297_TotalSegmentator_total_3mm_1559subj.zip",
                   "Dataset297_TotalSegmentator_total_3mm_1559subj/nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans"
                   "__3d_fullres/fold_0/checkpoint_final.pth"):
        assert needle in message
    # without weights_dir: TotalSegmentator's own default under TOTALSEG_HOME_DIR
    with pytest.raises(WeightsUnavailable, match="nnunet/results"):
        TotalSegmentatorSegmenter().check_weights()
    assert no_network == [] and not (tmp_path / "empty").exists() and not user_home.exists()


def test_totalseg_usage_statistics_off(user_home, tmp_path, no_network):
    """The private home's config.json turns statistics off, so TotalSegmentator's own sender does nothing."""
    from totalsegmentator import config as ts_config

    from medsynth.masks.totalseg import _offline_totalseg_env

    with _offline_totalseg_env(tmp_path / "weights") as home:
        assert os.environ["TOTALSEG_HOME_DIR"] == str(home) != str(user_home)
        assert os.environ["TOTALSEG_WEIGHTS_PATH"] == str(tmp_path / "weights")
        config = ts_config.setup_totalseg()  # what totalsegmentator() calls: keeps the existing file
        assert config["send_usage_stats"] is False and config["statistics_disclaimer_shown"] is True
        ts_config.send_usage_stats(ts_config.increase_prediction_counter(),
                                   {"task": "total", "fast": True, "preview": False, "multilabel": True,
                                    "roi_subset": None, "statistics": False, "radiomics": False})
    assert no_network == []
    assert not home.exists() and not user_home.exists()
    assert os.environ["TOTALSEG_HOME_DIR"] == str(user_home) and "TOTALSEG_WEIGHTS_PATH" not in os.environ


def test_factory_builds_both_backends(tmp_path):
    from medsynth.masks.backend import make_segmenter
    from medsynth.masks.lungmask_seg import LungmaskSegmenter
    from medsynth.masks.totalseg import TotalSegmentatorSegmenter

    ts = make_segmenter({"backend": "totalsegmentator",
                         "totalsegmentator": {"task": "total", "fast": True, "weights_dir": str(tmp_path),
                                              "device": "cpu", "nr_threads": 1, "roi_subset": None}})
    assert isinstance(ts, TotalSegmentatorSegmenter) and ts.name == "totalsegmentator"
    assert ts.resolved_weights_dir() == tmp_path
    lm = make_segmenter({"backend": "lungmask",
                         "lungmask": {"model": "LTRCLobes", "modelpath": None, "device": "cpu", "batch_size": 4,
                                      "fillmodel": "R231"}})
    assert isinstance(lm, LungmaskSegmenter) and lm.name == "lungmask" and len(lm.names) == 5
