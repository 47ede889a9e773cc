"""nnU-Net v2 downstream segmenter (medsynth.downstream.nnunet)."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest
import torch

from medsynth.downstream import nnunet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _slices(n: int = 16, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise slices in [-1, 1] with a bright disc (channel 0) and a brighter square (channel 1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(-0.5, 0.1, (n, 1, size, size)).astype(np.float32)
    y = np.zeros((n, 2, size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
        r = int(rng.integers(size // 10, size // 5))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        sx, sy = rng.integers(2, size - size // 6 - 2, 2)
        square = np.zeros((size, size), bool)
        square[sy:sy + size // 6, sx:sx + size // 6] = True
        square &= ~disc
        y[i, 0], y[i, 1] = disc, square
        x[i, 0][disc] += 0.8
        x[i, 0][square] += 1.2
    return x.clip(-1, 1), y


def test_encode_labels_later_channel_wins():
    y = np.zeros((2, 3, 4, 4), np.float32)
    y[0, 0, :2] = 1
    y[0, 1, 1:3] = 1  # overlaps channel 0 on row 1
    y[1, 2, 3, 3] = 1
    seg = nnunet.encode_labels(y)
    assert seg.dtype == np.uint8 and seg.shape == (2, 4, 4)
    assert (seg[0, 0] == 1).all() and (seg[0, 1] == 2).all() and (seg[0, 2] == 2).all() and (seg[0, 3] == 0).all()
    assert seg[1, 3, 3] == 3 and seg[1].sum() == 3


def test_export_round_trip(tmp_path):
    import SimpleITK as sitk

    x, y = _slices(n=3, size=32)
    root = nnunet.export_dataset(x, y, tmp_path / "raw", dataset_id=7, dataset_name="toy", names=["liver", "lungs"])
    assert root == tmp_path / "raw" / "Dataset007_toy" and not (tmp_path / "raw" / "Dataset007_toy.tmp").exists()
    ds = json.loads((root / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "zscore"}
    assert ds["labels"] == {"background": 0, "liver": 1, "lungs": 2}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    for i in range(3):
        img = sitk.ReadImage(str(root / "imagesTr" / f"case_{i:05d}_0000.nii.gz"))
        lab = sitk.ReadImage(str(root / "labelsTr" / f"case_{i:05d}.nii.gz"))
        a, s = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
        assert a.shape == (32, 32) and s.shape == (32, 32)
        np.testing.assert_allclose(a - nnunet.INTENSITY_OFFSET, x[i, 0], atol=1e-6)
        assert a.min() > 0  # nothing zero: nnU-Net never crops
        np.testing.assert_array_equal(s, nnunet.encode_labels(y[i:i + 1])[0])
    # nnU-Net's own reader sees (C=1, 1, H, W) and the same z-score as NnUNetSegmenter.normalize
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    data, _props = SimpleITKIO().read_images([str(root / "imagesTr" / "case_00000_0000.nii.gz")])
    assert data.shape == (1, 1, 32, 32)
    ref = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(data[0].copy())
    ours = nnunet.NnUNetSegmenter.normalize(torch.from_numpy(x[:1]))
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-5)


def test_softmax_to_channel_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6) * 5
    logits[0, 1, 0, 0] = 80.0  # saturated probability stays finite
    out = nnunet.softmax_to_channel_logits(logits)
    assert out.shape == (2, 3, 5, 6) and torch.isfinite(out).all()
    torch.testing.assert_close(torch.sigmoid(out), torch.softmax(logits, 1)[:, 1:], atol=1e-6, rtol=1e-5)


def test_segmenter_forward_pads_and_maps(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Conv2d(1, 3, 1)

        def forward(self, z):
            self.seen = tuple(z.shape)
            return self.encoder(z)

    model = nnunet.NnUNetSegmenter(Net(), num_channels=2, stride=(4, 4)).eval()
    x = torch.rand(3, 1, 10, 7) * 2 - 1
    out = model(x)
    assert out.shape == (3, 2, 10, 7) and model.network.seen == (3, 1, 12, 8)  # padded to the stride, cropped
    z = nnunet.NnUNetSegmenter.normalize(x)  # a 1x1 conv: padding does not change the inner pixels
    torch.testing.assert_close(torch.sigmoid(out), torch.softmax(model.network(z), 1)[:, 1:], atol=1e-5, rtol=1e-4)
    from medsynth.downstream import encoder_features

    assert encoder_features(model, x).shape == (3, 3)


def test_failing_command_names_command_and_output(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('planning went wrong'); sys.exit(3)"]
    with pytest.raises(nnunet.NnUNetCommandError) as err:
        nnunet.run_command(cmd, tmp_path / "logs" / "x.log")
    msg = str(err.value)
    assert "exit code 3" in msg and "planning went wrong" in msg and sys.executable in msg
    assert "planning went wrong" in (tmp_path / "logs" / "x.log").read_text()


def test_params_validation():
    p = nnunet.nnunet_params({"fold": 0})
    assert p["fold"] == "0" and p["configuration"] == "2d" and p["trainer_no_augmentation"] == "nnUNetTrainerNoDA"
    with pytest.raises(ValueError, match="unknown nnunetv2 params"):
        nnunet.nnunet_params({"epochs": 3})
    from medsynth.downstream import build_segmenter

    with pytest.raises(ValueError, match="nnU-Net"):
        build_segmenter({"type": "nnunetv2"}, 1, 2)


def test_trainer_names_exist():
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import nnUNetTrainer_1epoch

    assert nnUNetTrainerNoDA.__name__ == nnunet.DEFAULT_NNUNET_PARAMS["trainer_no_augmentation"]
    assert nnUNetTrainer_1epoch.__name__ == "nnUNetTrainer_1epoch"


@pytest.mark.slow
def test_train_load_evaluate_nnunet(tmp_path):
    """One nnU-Net epoch (250 + 50 iterations, batch 2, 64x64, a narrowed network) on CPU via train_segmenter."""
    from medsynth.downstream import encoder_features, evaluate_segmenter, load_segmenter, train_segmenter

    x, y = _slices(n=16, size=64)
    narrow = {"architecture": {"arch_kwargs": {"features_per_stage": [8, 16, 32, 64, 128]}}}  # ~16x fewer FLOPs
    cfg = {"model": {"type": "nnunetv2", "params": {"trainer_no_augmentation": "nnUNetTrainer_1epoch",
                                                     "num_processes": 0, "plans_overrides": narrow}}}
    t0 = time.time()
    model, result = train_segmenter(x, y, cfg, tmp_path / "run", augment=False)
    seconds = time.time() - t0
    print(f"nnU-Net 1 epoch: {seconds:.1f} s in total, {result.seconds_per_step:.1f} s per epoch")
    assert result.status == "completed" and result.exit_code == 0 and result.step == 1
    assert result.final_dir == tmp_path / "run" / "segmenter" and math.isfinite(result.seconds_per_step)
    record = json.loads((result.final_dir / "segmenter.json").read_text())
    assert record["model"]["type"] == "nnunetv2" and record["out_channels"] == 2
    curve = (tmp_path / "run" / "loss_curve.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,train_loss,val_loss,pseudo_dice") and len(curve) == 2

    loaded = load_segmenter(result.final_dir)
    assert isinstance(loaded, nnunet.NnUNetSegmenter)
    scores = evaluate_segmenter(loaded, x, y, ["disc", "square"])
    assert math.isfinite(scores["mdsc"]) and 0.0 <= scores["mdsc"] <= 1.0
    feats = encoder_features(loaded, torch.from_numpy(x[:5]))
    assert feats.shape == (5, 128) and torch.isfinite(feats).all()
    torch.testing.assert_close(loaded(torch.from_numpy(x[:2])), model(torch.from_numpy(x[:2])))

    # a rerun with the same inputs reuses the finished model instead of retraining
    t1 = time.time()
    _model2, again = train_segmenter(x, y, cfg, tmp_path / "run", augment=False)
    assert again.status == "completed" and again.step == 1 and time.time() - t1 < 60
