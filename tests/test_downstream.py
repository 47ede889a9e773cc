"""Downstream segmentation (ViCTr Table 3 / MedSyn2 Table 5 protocol): settings, augmentation, training,
encoder features, save/load and evaluation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from medsynth.downstream import (
    SETTINGS,
    SegmentationData,
    SegmentationStep,
    apply_augmentation,
    augmentation,
    build_segmenter,
    compose_setting,
    encoder_features,
    evaluate_segmenter,
    load_segmenter,
    metrics_from_masks,
    predict_masks,
    save_segmenter,
    train_segmenter,
    unet_bottom,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_UNET = {"type": "unet", "params": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}}


def disks(n: int, size: int = 32, seed: int = 0, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Images of bright disks on a dark noisy background (in [-1, 1]) and their masks in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, 1, size, size), np.float32)
    masks = np.empty((n, channels, size, size), np.float32)
    for i in range(n):
        r = rng.uniform(size * 0.15, size * 0.3)
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img = np.where(disk, 0.6, -0.7) + rng.normal(0, 0.1, (size, size))
        images[i, 0] = np.clip(img, -1, 1)
        for c in range(channels):  # channel c: the disk shrunk by c pixels (overlapping labels)
            masks[i, c] = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < max(r - c, 1) ** 2, 0.5, -0.5)
    return images, masks


def test_training_settings_take_the_schema_defaults():
    """train_segmenter's settings, the segmenter's params and the augmentation: the schema's defaults."""
    import math

    from medsynth.downstream import DEFAULT_AUGMENTATION, DEFAULT_TRAIN, segmenter_config, train_settings
    from medsynth.settings import section

    schema = section("downstream")
    settings = train_settings({"steps": 5, "fingerprint": "abc"})
    assert settings["steps"] == 5 and settings["fingerprint"] == "abc"
    assert {k: v for k, v in settings.items() if k not in ("steps", "fingerprint")} == {
        k: schema[k] for k in settings if k not in ("steps", "fingerprint")}
    assert (settings["max_grad_norm"], settings["keep_checkpoints"], settings["log_every"],
            settings["dice_weight"], settings["bce_weight"]) == (1.0, 2, 10, 1.0, 1.0)
    assert DEFAULT_TRAIN == train_settings({}) and DEFAULT_AUGMENTATION == schema["augmentation"]
    assert DEFAULT_AUGMENTATION["rotate_range"] == math.radians(15.0)
    with pytest.raises(ValueError, match="unknown downstream training keys"):
        train_settings({"train_select": {}})
    assert segmenter_config({})["params"] == {"channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 1}
    assert segmenter_config({"type": "UNETR", "params": {"img_size": [32, 32]}}) == {
        "type": "unetr", "params": {"img_size": [32, 32], "feature_size": 16, "hidden_size": 192, "mlp_dim": 384,
                                    "num_heads": 4}}
    from medsynth.downstream.nnunet import DEFAULT_NNUNET_PARAMS

    assert segmenter_config({"type": "nnunetv2"})["params"] == DEFAULT_NNUNET_PARAMS  # the adapter's settings
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        augmentation({"probability": 0.5})


def test_compose_setting_counts_and_sources():
    real = (np.full((20, 1, 8, 8), -1.0, np.float32), np.full((20, 2, 8, 8), -0.5, np.float32))
    synth = (np.ones((50, 1, 8, 8), np.float32), np.full((50, 2, 8, 8), 0.5, np.float32))
    assert SETTINGS == ("real", "real_aug", "real_synth", "synth_only")

    x, y, s = compose_setting("real_synth", real, synth, synthetic_fraction=0.3, seed=1)
    assert (s["n_real"], s["n_synthetic"], s["n"]) == (20, 6, 26)
    assert len(x) == len(y) == 26 and int((x[:, 0, 0, 0] > 0).sum()) == 6  # 6 synthetic images
    assert set(y.unique().tolist()) == {0.0, 1.0} and int((y[:, 0, 0, 0] == 1).sum()) == 6
    # the first k of the (already shuffled) synthetic set are used
    marked = (synth[0].copy(), synth[1])
    marked[0][:6] = 0.5
    x, _, _ = compose_setting("real_synth", real, marked, synthetic_fraction=0.3, seed=1)
    assert int((x[:, 0, 0, 0] == 0.5).sum()) == 6 and int((x[:, 0, 0, 0] == 1.0).sum()) == 0

    x, y, s = compose_setting("synth_only", real, synth)
    assert (s["n_real"], s["n_synthetic"]) == (0, 50) and bool((x == 1).all()) and bool((y == 1).all())
    x, _, s = compose_setting("real_aug", real, None)
    assert (s["n_real"], s["n_synthetic"], s["augment"]) == (20, 0, True) and bool((x == -1).all())

    for setting, bad in (("real_synth", None), ("synth_only", None),
                         ("real_synth", (np.zeros((0, 1, 8, 8)), np.zeros((0, 2, 8, 8))))):
        with pytest.raises(ValueError, match="synthetic"):
            compose_setting(setting, real, bad)
    with pytest.raises(ValueError, match="only 5"):
        compose_setting("real_synth", real, (synth[0][:5], synth[1][:5]))
    with pytest.raises(ValueError, match="unknown downstream setting"):
        compose_setting("real_plus", real, synth)


def test_augmentation_keeps_image_and_label_aligned():
    images, masks = disks(6, size=64, seed=3)
    labels = (masks > 0).astype(np.float32)
    aligned = torch.as_tensor(labels * 2 - 1)  # the image *is* the (scaled) label
    transform = augmentation({"prob": 1.0}, spatial_size=(64, 64), seed=0)
    x, y = apply_augmentation(transform, aligned, torch.as_tensor(labels), seed=11)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(y, torch.as_tensor(labels))  # something did move
    pred, ref = x > 0, y > 0
    dice = 2 * (pred & ref).sum((1, 2, 3)) / (pred.sum((1, 2, 3)) + ref.sum((1, 2, 3)))
    assert float(dice.min()) > 0.95
    # seeded: same seed, same result; another seed, another result
    x2, y2 = apply_augmentation(transform, aligned, torch.as_tensor(labels), seed=11)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = apply_augmentation(transform, aligned, torch.as_tensor(labels), seed=12)
    assert not torch.equal(x, x3)
    # prob 0: identity
    x0, y0 = apply_augmentation(augmentation({"prob": 0.0}, (64, 64)), aligned, torch.as_tensor(labels))
    assert torch.equal(x0, aligned) and torch.equal(y0, torch.as_tensor(labels))


def test_segmentation_step_augmentation_follows_the_loop_generator():
    images, masks = disks(4, size=32, seed=5)
    step = SegmentationStep(augment={"prob": 1.0}, dice_weight=1.0, bce_weight=1.0)
    x, y = torch.as_tensor(images), torch.as_tensor((masks > 0).astype(np.float32))
    a = step.augment_batch(x, y, torch.Generator().manual_seed(7))
    b = step.augment_batch(x, y, torch.Generator().manual_seed(7))
    c = step.augment_batch(x, y, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    model = build_segmenter(TINY_UNET, 1, 1)
    terms = step(model, {"image": x, "label": y}, 0, torch.Generator().manual_seed(7))
    assert set(terms) == {"loss", "dice_loss", "bce"} and terms["loss"].requires_grad


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny UNet trained on 16 disk images (32x32) for 80 steps."""
    images, masks = disks(16, size=32, seed=0)
    cfg = {"model": TINY_UNET, "steps": 80, "batch_size": 8, "lr": 1e-2, "weight_decay": 1e-4, "warmup_steps": 0,
           "seed": 0, "checkpoint_every": 0}
    out = tmp_path_factory.mktemp("downstream")
    model, result = train_segmenter(images, masks, cfg, out, augment=False)
    return model, result, out


def test_tiny_unet_learns_disks(trained):
    model, result, out = trained
    assert result.status == "completed" and result.step == 80
    assert result.final_dir == out / "segmenter" and (out / "segmenter" / "model.safetensors").exists()
    losses = [r["loss"] for r in result.history]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    images, masks = disks(12, size=32, seed=99)  # held out
    metrics = evaluate_segmenter(model, images, masks, ["disk"])
    assert metrics["mdsc"] > 0.8, metrics
    assert metrics["n"] == 12 and metrics["channels"]["disk"]["n_reference"] == 12
    assert np.isfinite(metrics["mhd95"]) and metrics["mhd95"] < 5
    assert metrics["hd95_unit"] in ("pixel", "mm")


def test_encoder_features_and_save_load_round_trip(trained, tmp_path):
    model, _, out = trained
    images, _ = disks(5, size=32, seed=42)
    x = torch.as_tensor(images)
    model.train()
    f1 = encoder_features(model, x)
    f2 = encoder_features(model, x, batch_size=2)
    assert f1.shape == (5, TINY_UNET["params"]["channels"][-1])
    assert torch.allclose(f1, f2, atol=1e-5) and model.training  # deterministic, mode restored
    assert not torch.allclose(f1[0], f1[1])
    # the hook sits on the bottom of the nested UNet: channels[-1] features at 1/4 resolution
    captured = []
    h = unet_bottom(model).register_forward_hook(lambda m, i, o: captured.append(o.shape))
    with torch.no_grad():
        model.eval()(x[:1])
    h.remove()
    assert captured == [torch.Size([1, 32, 8, 8])]

    loaded = load_segmenter(out / "segmenter")
    assert loaded.segmenter_record["model"]["type"] == "unet"
    assert torch.equal(predict_masks(loaded, x), predict_masks(model, x))
    assert torch.equal(encoder_features(loaded, x), encoder_features(model, x))
    save_segmenter(loaded, TINY_UNET, tmp_path / "again")
    assert torch.equal(predict_masks(load_segmenter(tmp_path / "again"), x), predict_masks(model, x))


class _Oracle(nn.Module):
    """Returns +-10 logits from a fixed mask (a perfect predictor for that mask)."""

    def __init__(self, masks: torch.Tensor):
        super().__init__()
        self.register_buffer("masks", masks)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.masks[: len(x)] * 20 - 10) + 0 * self.dummy


def test_evaluate_perfect_predictor_and_empty_channels():
    _, masks = disks(4, size=32, seed=1, channels=2)
    labels = torch.as_tensor(masks > 0).float()
    labels[:, 1] = 0  # channel 2 empty everywhere: excluded from the means
    images = torch.zeros(4, 1, 32, 32)
    metrics = evaluate_segmenter(_Oracle(labels), images, labels, ["a", "b"], spacing=1.5, batch_size=4)
    assert metrics["mdsc"] == pytest.approx(1.0) and metrics["mhd95"] == pytest.approx(0.0)
    assert metrics["channels"]["b"]["status"] == "empty" and metrics["n_channels_present"] == 1
    assert metrics["hd95_unit"] == "mm"
    # a shifted prediction: Dice < 1, HD95 > 0
    shifted = torch.roll(labels, 3, dims=-1).bool()
    m = metrics_from_masks(shifted, labels, ["a", "b"])
    assert 0.3 < m["mdsc"] < 1.0 and m["mhd95"] >= 3 - 1e-6 and m["hd95_unit"] == "pixel"
    # HD95 in mm scales with the pixel spacing, Dice does not
    mm = metrics_from_masks(shifted, labels, ["a", "b"], spacing=[2.0, 2.0])
    assert mm["hd95_unit"] == "mm" and mm["mhd95"] == pytest.approx(2 * m["mhd95"])
    assert mm["mdsc"] == pytest.approx(m["mdsc"])


def test_segmentation_data_and_model_types():
    images, masks = disks(3, size=32, seed=2, channels=2)
    data = SegmentationData.from_arrays(images * 1.2, masks, ["a", "b"])
    assert float(data.image.abs().max()) <= 1.0 and set(data.label.unique().tolist()) == {0.0, 1.0}
    assert len(data.dataset) == 3 and data.dataset.get_batch([0])["label"].shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="names"):
        SegmentationData.from_arrays(images, masks, ["a"])
    with pytest.raises(ValueError, match="unknown segmenter type"):
        build_segmenter({"type": "vnet"}, 1, 2)
    x = torch.as_tensor(images)
    swin = build_segmenter({"type": "swinunetr", "params": {"feature_size": 12, "depths": [1, 1, 1, 1]}}, 1, 2)
    x64 = torch.nn.functional.interpolate(x, size=(64, 64))  # SwinUNETR: 32x downsampling to >1 pixel
    assert swin(x64).shape == (3, 2, 64, 64) and encoder_features(swin, x64).shape == (3, 192)
    unetr = build_segmenter({"type": "unetr", "params": {"img_size": [32, 32], "hidden_size": 48, "mlp_dim": 96,
                                                          "num_heads": 2, "feature_size": 8}}, 1, 2)
    assert unetr(x).shape == (3, 2, 32, 32) and encoder_features(unetr, x).shape == (3, 48)


def test_augmented_training_resumes_exactly(tmp_path):
    images, masks = disks(8, size=32, seed=4)
    cfg = {"model": TINY_UNET, "steps": 6, "batch_size": 4, "lr": 1e-2, "weight_decay": 1e-4, "warmup_steps": 0,
           "seed": 3, "checkpoint_every": 3, "augmentation": {"prob": 0.5}}
    full, _ = train_segmenter(images, masks, cfg, tmp_path / "full", augment=True)
    resumed_dir = tmp_path / "resumed"
    train_segmenter(images, masks, cfg, resumed_dir, augment=True)
    shutil.rmtree(resumed_dir / "checkpoints" / "step-000006")  # as if killed after step 3's checkpoint
    shutil.rmtree(resumed_dir / "segmenter")
    resumed, result = train_segmenter(images, masks, cfg, resumed_dir, augment=True)
    assert result.resumed_from is not None and result.resumed_from.name == "step-000003"
    assert result.step == 6 and len(result.history) == 3
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    no_aug, _ = train_segmenter(images, masks, cfg, tmp_path / "plain", augment=False)
    assert not all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), no_aug.state_dict().values()))


def test_meddiff_filter_keeps_the_closest_half_and_erodes_their_labels(tmp_path):
    from medsynth.downstream import build_segmenter, save_segmenter
    from medsynth.evaluation import meddiff_filter

    torch.manual_seed(0)
    cfg = {"type": "unet", "params": {"channels": [8, 16], "strides": [2], "num_res_units": 0}}
    save_segmenter(build_segmenter(cfg, 1, 1), cfg, tmp_path / "seg")
    g = torch.Generator().manual_seed(1)
    real = (torch.rand(12, 1, 16, 16, generator=g) * 0.2 - 0.5).numpy()
    near = (torch.rand(6, 1, 16, 16, generator=g) * 0.2 - 0.5).numpy()
    far = np.ones((6, 1, 16, 16), np.float32) * 0.9  # far from the real slices in any feature space
    images = np.concatenate([far[:3], near, far[3:]])
    masks = np.zeros((12, 1, 16, 16), np.uint8)
    masks[:, :, 4:11, 4:11] = 1
    kept, labels, info = meddiff_filter(images, masks, real, tmp_path / "seg",
                                         {"keep_fraction": 0.5, "erosion": 1})
    assert info["kept"] == 6 and info["of"] == 12 and np.allclose(kept, near)
    assert labels.shape == (6, 1, 16, 16) and labels.sum(axis=(1, 2, 3)).tolist() == [25] * 6  # 7x7 -> 5x5
