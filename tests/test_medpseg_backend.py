"""The MEDPSeg segmenter (``medsynth.masks.medpseg``): it loads a Lightning-layout checkpoint without running
code from it, follows upstream's recipe (checked against a reference built with SimpleITK, upstream's
reader, and torch's trilinear resize, with the network replaced by fixed logits), and refuses what it
cannot do. The checkpoints are made here from randomly initialised networks; no real weights are used.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from nibabel.orientations import axcodes2ornt, ornt_transform

from medsynth.io.state_dict import UnsafeWeightsFile
from medsynth.io.volume import nifti_to_sitk
from medsynth.masks.backend import make_segmenter
from medsynth.masks.medpseg import LABELS, WEIGHTS_URL, MedPSegSegmenter, network_options
from medsynth.masks.medpseg_net import CHECKPOINT_PREFIX, MedPSegNet
from medsynth.masks.types import WeightsUnavailable

LIGHTNING_PARSING = "pytorch_lightning.utilities.parsing"


def _save_checkpoint(net: torch.nn.Module, path, hyper_parameters) -> None:
    """A checkpoint laid out like Lightning's (network under ``model.model.``)."""
    state = {CHECKPOINT_PREFIX + k: v for k, v in net.state_dict().items()}
    state["loss_weight"] = torch.ones(3)  # a module buffer outside the network, ignored
    torch.save({"epoch": 22, "global_step": 76176, "pytorch-lightning_version": "1.9.4",
                "torch_version": torch.torch_version.TorchVersion("2.0.1"), "state_dict": state,
                "hparams_name": "hparams", "hyper_parameters": hyper_parameters}, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Released topology (upsample + deep supervision), hyper-parameters in a Lightning AttributeDict.

    Lightning is not installed: a stand-in module gives the class its real import path while saving.
    """
    torch.manual_seed(0)
    net = MedPSegNet().eval()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("pytorch_lightning", "pytorch_lightning.utilities", LIGHTNING_PARSING):
            mp.setitem(sys.modules, name, types.ModuleType(name))

        class AttributeDict(dict):
            pass

        AttributeDict.__module__, AttributeDict.__qualname__ = LIGHTNING_PARSING, "AttributeDict"
        sys.modules[LIGHTNING_PARSING].AttributeDict = AttributeDict
        hp = AttributeDict(experiment_name="medseg_25d_a100_long_silver_gold_gdl", nin=3, seg_nout=4,
                           expand_bifpn="upsample", deep_supervision=True, compound_coef=4,
                           args=argparse.Namespace(lr=1e-4))
        path = tmp_path_factory.mktemp("medpseg") / "poly_medseg_25d_fix.ckpt"
        _save_checkpoint(net, path, hp)
    return path, net


def test_loads_checkpoint_and_segments_a_real_ct(checkpoint, ct_small):
    path, net = checkpoint
    image = ct_small.slicer[:, :, 12:13]  # one slice: a forward pass at 512 x 512 costs seconds on CPU
    seg = make_segmenter({"backend": "medpseg", "medpseg": {"checkpoint": str(path), "batch_size": 1}})
    assert isinstance(seg, MedPSegSegmenter)
    out = seg.segment(image, "CT")
    loaded = seg.network()
    assert loaded.expansion == "upsample" and loaded.deep_supervision
    ref = net.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    labels = np.asarray(out.labels.dataobj)
    assert labels.shape == image.shape and labels.dtype == np.int16
    assert np.allclose(out.labels.affine, image.affine)
    assert set(np.unique(labels).tolist()) <= set(range(6))
    assert out.names == LABELS == {1: "lung", 2: "ground_glass_opacity", 3: "consolidation", 4: "airway",
                                   5: "pulmonary_artery"}


# -- the recipe, with the network replaced by fixed logits --

N_Z, N_ROW, N_COL = 4, 16, 16  # the design's LPS (z, row, col) grid; 512 / 16 = 32


def _design() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-voxel network outputs on the LPS grid and the label map expected from them, by hand."""
    kind = np.zeros((N_Z, N_ROW, N_COL), dtype=int)  # 0 bg, 1 healthy, 2 GGO, 3 consolidation, 4 unsure
    airway = np.zeros(kind.shape, dtype=bool)
    artery = np.zeros(kind.shape, dtype=bool)
    kind[0:4, 3:13, 1:7] = 1  # component A (patient right: low columns)
    kind[1:3, 5:8, 2:5] = 2  # GGO in A
    kind[0, 3, 1] = 4  # background is the argmax but P(lung) = 0.6: lung, healthy
    kind[1:4, 3:13, 9:15] = 1  # component B
    kind[2:4, 8:11, 10:13] = 3  # consolidation in B
    kind[0, 14:16, 14:16] = 2  # component C, 4 voxels, not 26-connected to B: dropped
    airway[:, 1, 7:9] = True  # outside the lung: kept
    airway[2, 6, 3] = True  # in the GGO: airway wins
    artery[2, 6, 3] = True  # ... and the artery wins over the airway
    artery[3, 4:6, 11] = True
    probs = np.array([[.97, .01, .01, .01], [.01, .97, .01, .01], [.01, .01, .97, .01], [.01, .01, .01, .97],
                      [.40, .30, .29, .01]])
    outputs = {"main": np.log(probs[kind]).transpose(0, 3, 1, 2),
               "atm": np.stack([np.where(airway, -3.0, 3.0), np.where(airway, 3.0, -3.0)], axis=1),
               "vessel": np.stack([np.where(artery, -3.0, 3.0), np.where(artery, 3.0, -3.0)], axis=1)}
    expected = np.zeros(kind.shape, dtype=np.int16)
    expected[0:4, 3:13, 1:7] = 1
    expected[1:3, 5:8, 2:5] = 2
    expected[1:4, 3:13, 9:15] = 1
    expected[2:4, 8:11, 10:13] = 3
    expected[airway] = 4
    expected[artery] = 5
    return outputs, expected


class FixedLogits:
    """Stands in for the network: returns the design's logits for the next slices, in order.

    On the 512 x 512 grid the design sits on the pixels (32 i, 32 j) that torch's legacy ``nearest``
    resize back to 16 x 16 picks (upstream's mode); every other pixel says background, so another
    resampling shows up.
    """

    def __init__(self, outputs: dict[str, np.ndarray]):
        self.outputs = {}
        for k, v in outputs.items():
            full = torch.zeros((N_Z, v.shape[1], 512, 512))
            full[:, 0] = 3.0  # background, not airway, not artery
            full[:, :, ::32, ::32] = torch.as_tensor(v, dtype=torch.float32)
            self.outputs[k] = full
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        start = sum(len(i) for i in self.inputs)
        self.inputs.append(x.clone())
        return {k: v[start:start + len(x)] for k, v in self.outputs.items()}


def _physical_ct() -> nib.Nifti1Image:
    """A small RAS volume in HU."""
    rng = np.random.default_rng(1)
    data = rng.uniform(-1100, 700, size=(N_COL, N_ROW, N_Z)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-12.0, 30.0, 100.0]
    return nib.Nifti1Image(data, affine)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "SAR"])
def test_recipe_matches_a_reference_built_with_simpleitk(axcodes, monkeypatch):
    ras = _physical_ct()
    image = ras.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes))))
    assert "".join(nib.aff2axcodes(image.affine)) == axcodes
    outputs, expected_lps = _design()
    fake = FixedLogits(outputs)
    seg = MedPSegSegmenter(checkpoint="unused.ckpt", batch_size=3)  # batches of 3 + 1 slices
    monkeypatch.setattr(seg, "network", lambda: fake)
    out = seg.segment(image, "ct")

    # upstream's reader: SimpleITK, the array of the volume oriented L, P, S (what its flips give for RAS)
    stored = nifti_to_sitk(image)
    lps = sitk.DICOMOrient(stored, "LPS")
    assert np.allclose(lps.GetDirection(), np.eye(3).ravel())
    vol = np.clip(sitk.GetArrayFromImage(lps).astype(np.float32), -1024, 600)
    vol = torch.as_tensor((vol + 1024) / 1624)
    vol = F.interpolate(vol[None, None], (N_Z, 512, 512), mode="trilinear")[0, 0]
    clamp = lambda z: min(max(z, 0), N_Z - 1)  # noqa: E731
    reference_input = torch.stack([vol[[clamp(z - 1), z, clamp(z + 1)]] for z in range(N_Z)])
    assert [len(x) for x in fake.inputs] == [3, 1]
    assert torch.allclose(torch.cat(fake.inputs), reference_input, atol=1e-6)

    back = sitk.GetImageFromArray(expected_lps)
    back.CopyInformation(lps)
    back = sitk.DICOMOrient(back, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(stored.GetDirection()))
    expected = sitk.GetArrayFromImage(back).transpose(2, 1, 0)
    labels = np.asarray(out.labels.dataobj)
    assert labels.dtype == np.int16 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, expected)
    assert np.array_equal(out.labels.affine, image.affine)


# -- refusals --

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {CHECKPOINT_PREFIX + "x": torch.ones(1)}, "hyper_parameters": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeWeightsFile, match=r"system"):
        MedPSegSegmenter(checkpoint=path).network()
    assert not marker.exists()


def test_missing_weights_name_the_config_key_and_the_release(tmp_path):
    for checkpoint in (None, tmp_path / "nowhere.ckpt"):
        with pytest.raises(WeightsUnavailable, match="masks.segmenters\\[\\].medpseg.checkpoint") as err:
            MedPSegSegmenter(checkpoint=checkpoint).segment(_physical_ct(), "CT")
        assert WEIGHTS_URL in str(err.value)


def test_a_checkpoint_of_another_variant_loads_that_variant(tmp_path):
    torch.manual_seed(1)
    net = MedPSegNet(expansion="upsample_sum", deep_supervision=False)
    path = tmp_path / "variant.ckpt"
    _save_checkpoint(net, path, argparse.Namespace(expand_bifpn="upsample_sum", deep_supervision=False))
    loaded = MedPSegSegmenter(checkpoint=path).network()  # options left at upsample + deep supervision
    assert loaded.expansion == "upsample_sum" and not loaded.deep_supervision
    assert torch.equal(loaded.classifier.header.pointwise_conv.conv.weight,
                       net.classifier.header.pointwise_conv.conv.weight)
    _save_checkpoint(net, path, argparse.Namespace(expand_bifpn="conv"))  # a topology that does not fit
    with pytest.raises(ValueError, match="does not fit"):
        MedPSegSegmenter(checkpoint=path).network()
    # without hyper-parameters: no ds_* keys -> no deep supervision; upsample and upsample_sum have the
    # same keys, so the expansion option decides between them
    _save_checkpoint(net, path, {})
    assert MedPSegSegmenter(checkpoint=path).network().expansion == "upsample"
    loaded = MedPSegSegmenter(checkpoint=path, expansion="upsample_sum").network()
    assert loaded.expansion == "upsample_sum" and not loaded.deep_supervision
    _save_checkpoint(MedPSegNet(expansion="conv", deep_supervision=True), path, {})  # expand_conv keys -> conv
    loaded = MedPSegSegmenter(checkpoint=path, deep_supervision=False).network()
    assert loaded.expansion == "conv" and loaded.deep_supervision


@pytest.mark.parametrize("hparams", [{"learnable_norm": True}, {"compound_coef": 6}, {"large": True}])
def test_unsupported_variants_are_refused(hparams):
    with pytest.raises(ValueError, match="learnable_norm|compound_coef|large"):
        network_options(hparams, "upsample", True)


def test_learnable_norm_weights_are_refused_even_without_hyper_parameters(tmp_path):
    path = tmp_path / "norm.ckpt"
    state = {CHECKPOINT_PREFIX + "classifier.header.pointwise_conv.conv.bias": torch.zeros(4),
             "model.learnable_norm_module.vmin": torch.tensor(-1024.0)}
    torch.save({"state_dict": state, "hyper_parameters": {}}, path)
    with pytest.raises(ValueError, match="learnable_norm"):
        MedPSegSegmenter(checkpoint=path).network()


def test_only_ct_in_hu_is_segmented():
    seg = MedPSegSegmenter(checkpoint=None)
    with pytest.raises(ValueError, match="CT only"):
        seg.segment(_physical_ct(), "MR")
    flat = nib.Nifti1Image(np.zeros((4, 4, 2), dtype=np.float32), np.eye(4))
    with pytest.raises(ValueError, match="HU"):
        seg.segment(flat, "CT")
