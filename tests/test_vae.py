"""Tests for medsynth.vae: tiny 2D (diffusers) / 3D (MAISI) autoencoders, losses, metrics, tuning, resume.

Hand-computed values on tiny tensors; a tiny 2D VAE tuned on real CT slices; CPU only, one thread
(the machine is shared: one thread is both faster and steadier under contention than two).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsynth.io.trainsets import to_condition_values
from medsynth.preprocess.intensity import hu_to_unit
from medsynth.preprocess.trainsets import centre_crop_or_pad
from medsynth.vae import (
    TINY_VAE_CONFIGS,
    LossConfig,
    PerceptualUnavailableError,
    PretrainedUnavailableError,
    VAELoss,
    adversarial_active,
    build_autoencoder,
    build_perceptual_loss,
    decode,
    denormalise_latents,
    downsample_factor,
    encode,
    kl_loss,
    l1_loss,
    latent_statistics,
    latest_checkpoint,
    load_autoencoder,
    load_latent_statistics,
    normalise_latents,
    reconstruct,
    reconstruction_metrics,
    save_autoencoder,
    save_latent_statistics,
    ssim_loss,
    tune_vae,
)

SHAPES = {"2d": (2, 1, 32, 32), "3d": (1, 1, 16, 16, 16)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Identity(nn.Module):
    """Stand-in autoencoder: ``encode(x) = (x, 0)``, ``decode(z) = z`` rolled by ``shift`` along the last axis."""

    def __init__(self, shift: int = 0) -> None:
        super().__init__()
        self.shift = shift

    def encode(self, x):
        return x, torch.zeros_like(x)

    def decode(self, z):
        return torch.roll(z, self.shift, dims=-1) if self.shift else z


# ------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_tiny_round_trip_shapes(kind):
    torch.manual_seed(0)
    cfg = TINY_VAE_CONFIGS[kind]
    model = build_autoencoder(cfg).eval()
    x = torch.rand(SHAPES[kind]) * 2 - 1
    with torch.no_grad():
        mean, logvar = encode(model, x)
        y = decode(model, mean)
    f = downsample_factor(cfg)
    assert f == 4  # MAISI / MAISI-v2: 4x compression per axis
    assert mean.shape == logvar.shape == (x.shape[0], 4, *[s // f for s in x.shape[2:]])
    assert y.shape == x.shape
    assert torch.isfinite(logvar).all()
    assert torch.equal(reconstruct(model, x).detach(), y)
    expected = "AutoencoderKL" if kind == "2d" else "AutoencoderKlMaisi"
    assert type(model).__name__ == expected


def test_monai_backend_2d_and_config_checks():
    model = build_autoencoder({"spatial_dims": 2, "backend": "monai", "block_out_channels": [8, 8],
                               "norm_num_groups": 4})
    z, logvar = encode(model, torch.zeros(1, 1, 8, 8))
    assert z.shape == (1, 4, 4, 4) and decode(model, z).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="norm_num_groups"):
        build_autoencoder({"spatial_dims": 2, "block_out_channels": [12, 16], "norm_num_groups": 8})
    with pytest.raises(ValueError, match="2D only"):
        build_autoencoder({"spatial_dims": 3, "backend": "diffusers"})


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_save_load_and_local_pretrained(kind, tmp_path):
    torch.manual_seed(1)
    model = build_autoencoder(TINY_VAE_CONFIGS[kind]).eval()
    x = torch.rand(SHAPES[kind]) * 2 - 1
    folder = save_autoencoder(model, tmp_path / "final")
    again = load_autoencoder(folder).eval()
    with torch.no_grad():
        assert torch.allclose(reconstruct(model, x), reconstruct(again, x), atol=1e-6)
    source = folder if kind == "2d" else folder / "model.safetensors"
    from_pretrained = build_autoencoder({**TINY_VAE_CONFIGS[kind], "pretrained": str(source)}).eval()
    with torch.no_grad():
        assert torch.allclose(reconstruct(model, x), reconstruct(from_pretrained, x), atol=1e-6)


def test_vae_sections_take_the_schema_defaults_of_their_own_section():
    """2D configs complete with `vae`'s defaults, 3D ones with `volumes.vae`'s (the values the 3D path used
    when that section was free-form: the tuning code's seed 0, stats_batch_size 8, ... and MAISI's tiny VAE)."""
    from medsynth.settings import section
    from medsynth.vae.models import model_config, vae_section
    from medsynth.vae.tune import TuneConfig

    two, three = vae_section({}), vae_section({"model": {"spatial_dims": 3}})
    assert two == section("vae") and (two["seed"], two["stats_batch_size"], two["model"]["sample_size"]) == (11, 32, 64)
    assert three == section("volumes")["vae"] and (three["seed"], three["stats_batch_size"]) == (0, 8)
    tune = TuneConfig.from_config({})
    assert {k: three[k] for k in ("steps", "batch_size", "lr", "weight_decay", "seed", "patch_size", "checkpoint_every",
                                  "keep_checkpoints", "resume", "progress", "stats_batch_size")} == {
        k: getattr(tune, k) for k in ("steps", "batch_size", "lr", "weight_decay", "seed", "patch_size",
                                      "checkpoint_every", "keep_checkpoints", "resume", "progress", "stats_batch_size")}
    assert {k: v for k, v in three["model"].items() if k != "num_splits"} == TINY_VAE_CONFIGS["3d"]
    assert model_config(build_autoencoder({"spatial_dims": 3}))["block_out_channels"] == [8, 16, 16]


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`:UserWarning")
def test_pretrained_unavailable_names_config_key(tmp_path):
    with pytest.raises(PretrainedUnavailableError, match=r"config key 'pretrained'.*vae\.model\.pretrained"):
        build_autoencoder({**TINY_VAE_CONFIGS["2d"], "pretrained": "no-such-org/no-such-vae"})
    with pytest.raises(PretrainedUnavailableError, match=r"vae\.model\.pretrained"):
        build_autoencoder({**TINY_VAE_CONFIGS["3d"], "pretrained": str(tmp_path / "missing.safetensors")})


# ------------------------------------------------------------------------------------------ losses


def test_l1_hand_value():
    recon = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]])
    assert l1_loss(recon, torch.zeros_like(recon)).item() == pytest.approx((1 + 2 + 3 + 0) / 4)


def test_kl_of_known_gaussians():
    # KL(N(1, 1) || N(0, 1)) = 0.5;  KL(N(0, 2) || N(0, 1)) = 0.5 (2 - 1 - ln 2);  KL(N(0,1)||N(0,1)) = 0
    assert kl_loss(torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)).item() == pytest.approx(0.5)
    var2 = 0.5 * (2 - 1 - math.log(2))
    assert kl_loss(torch.zeros(3), torch.full((3,), math.log(2))).item() == pytest.approx(var2, rel=1e-6)
    assert kl_loss(torch.zeros(5), torch.zeros(5)).item() == 0.0
    mixed = kl_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, math.log(2)]))
    assert mixed.item() == pytest.approx((0.5 + var2) / 2, rel=1e-6)  # mean over latent elements


def test_ssim_loss_values():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    # constant images a, b: contrast/structure terms are C2/C2 = 1, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = (0.01 * 2.0) ** 2
    a, b = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), -0.5)
    assert ssim_loss(a, b).item() == pytest.approx(1 - (2 * 0.5 * -0.5 + c1) / (0.5 + c1), rel=1e-5)
    vol = torch.rand(1, 1, 8, 8, 8)  # 3D, window shrunk to 7
    assert ssim_loss(vol, vol).item() == pytest.approx(0.0, abs=1e-6)


def test_perceptual_optional_and_clear_error():
    assert build_perceptual_loss(LossConfig.from_config({}), 2) is None  # weight 0 by default
    try:
        import lpips  # noqa: F401
        pytest.skip("lpips installed: LPIPS would try to download its weights")
    except ImportError:
        pass
    with pytest.raises(PerceptualUnavailableError, match=r"losses\.perceptual_weight"):
        build_perceptual_loss(LossConfig.from_config({"perceptual_weight": 0.1, "perceptual_network": "squeeze"}), 2)
    with pytest.raises(ValueError, match="unknown losses config keys"):
        LossConfig.from_config({"perceptual_wieght": 1.0})


class ConstantDisc(nn.Module):
    """Discriminator stand-in returning constant logits (feature list, logits last, like PatchDiscriminator)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return [torch.full((x.shape[0], 1, 3, 3), self.value) + 0 * self.dummy]


def test_adversarial_warmup_and_least_squares_values():
    cfg = LossConfig.from_config({"l1_weight": 1.0, "kl_weight": 0.0, "adv_weight": 0.5, "adv_warmup_steps": 3,
                              "disc_channels": 8})
    assert [adversarial_active(cfg, s) for s in range(5)] == [False, False, False, True, True]
    assert not adversarial_active(LossConfig.from_config({}), 10)
    losses = VAELoss(cfg, spatial_dims=2)
    assert type(losses.discriminator).__name__ == "PatchDiscriminator"
    x = torch.zeros(2, 1, 16, 16)
    recon = torch.full_like(x, 0.5)
    mean, logvar = torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)
    total, terms = losses.generator_loss(recon, x, mean, logvar, step=2)
    assert "adv_g" not in terms and total.item() == pytest.approx(0.5)
    _, terms = losses.generator_loss(recon, x, mean, logvar, step=3)
    assert "adv_g" in terms
    losses.discriminator = ConstantDisc(0.25)  # least squares (LeakyReLU keeps 0.25): hand values
    total, terms = losses.generator_loss(recon, x, mean, logvar, step=3)
    assert terms["adv_g"] == pytest.approx((0.25 - 1) ** 2)
    assert total.item() == pytest.approx(0.5 + 0.5 * 0.5625)
    assert losses.discriminator_loss(recon, x).item() == pytest.approx(0.5 * (0.25 ** 2 + 0.75 ** 2))


# ------------------------------------------------------------------------------------------ latents


def test_latent_statistics_of_known_input(tmp_path):
    x = torch.zeros(3, 2, 4, 4)
    x[:, 0] = 3.0
    x[:, 1] = torch.tensor([2.0, -2.0]).repeat(8).reshape(4, 4)  # mean 0, std 2
    stats = latent_statistics(Identity(), x, batch_size=2)
    assert stats["mean"] == pytest.approx([3.0, 0.0]) and stats["std"] == pytest.approx([0.0, 2.0])
    assert stats["count"] == 3 * 16
    one = latent_statistics(Identity(), x, batch_size=1)
    assert one["mean"] == pytest.approx(stats["mean"]) and one["std"] == pytest.approx(stats["std"])
    z = torch.randn(2, 2, 4, 4) * torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1) + 5
    s = latent_statistics(Identity(), z, batch_size=8)
    zn = normalise_latents(z, s)
    assert zn.mean(dim=(0, 2, 3)).abs().max() < 1e-5 and (zn.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-5
    assert torch.allclose(denormalise_latents(zn, s), z, atol=1e-5)
    assert load_latent_statistics(save_latent_statistics(s, tmp_path / "stats.json")) == s


def test_streamed_latent_statistics_equal_the_in_memory_ones_bit_for_bit():
    """Statistics of images given part by part (one array per shard, read lazily) are those of the parts'
    concatenation bit for bit: the batches straddle the parts' boundaries exactly as slicing one array's."""
    from medsynth.vae.latents import image_batches

    model = _tiny_vae().eval()
    x = torch.rand(9, 1, 32, 32) * 2 - 1
    bounds = [0, 3, 3, 5, 6, 9]  # parts of 3, 0, 2, 1, 3 images: batches of 4 = [3 + 1], [1 + 1 + 2], [1]
    parts = [x[a:b].numpy() for a, b in zip(bounds, bounds[1:])]
    read = []

    def lazily():
        for i, part in enumerate(parts):
            read.append(i)
            yield part

    batches = list(image_batches(parts, 4))
    assert [len(b) for b in batches] == [4, 4, 1]
    assert all(torch.equal(b, x[i:i + 4]) for b, i in zip(batches, range(0, 9, 4)))
    streamed = latent_statistics(model, lazily(), batch_size=4)
    assert read == list(range(len(parts)))  # each part read once
    assert streamed == latent_statistics(model, x, batch_size=4)  # float for float, not approximately
    assert streamed["count"] == 9 * 4 * 4 * 4  # 4 channels on a 4 x 4 latent grid
    with pytest.raises(ValueError, match="at least one image"):
        latent_statistics(model, iter([]), batch_size=4)


# ------------------------------------------------------------------------------------------ metrics


def _square_masks(n: int = 2, size: int = 32) -> torch.Tensor:
    """Binary masks [n, 2, size, size]: channel 0 an 8x8 square at rows/cols 8..15, channel 1 empty."""
    m = torch.zeros(n, 2, size, size)
    m[:, 0, 8:16, 8:16] = 1
    return m


def test_metrics_perfect_reconstruction():
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    masks = to_condition_values(_square_masks().numpy().astype(np.uint8))
    out = reconstruction_metrics(Identity(), images, masks, mask_names=["square", "none"])
    assert out["image"]["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert out["image"]["psnr"] == math.inf
    sq = out["masks"]["square"]
    assert (sq["dice"], sq["jaccard"], sq["hd95"], sq["asd"]) == (1.0, 1.0, 0.0, 0.0)
    assert sq["n_reference"] == 2 and sq["status"] == "ok"
    none = out["masks"]["none"]
    assert none["status"] == "empty" and none["n_reference"] == 0
    assert all(math.isnan(none[k]) for k in ("dice", "jaccard", "hd95", "asd"))
    vol = torch.rand(1, 1, 16, 16, 16) * 2 - 1  # 3D path
    assert reconstruction_metrics(Identity(), vol)["image"]["ssim"] == pytest.approx(1.0, abs=1e-5)


def test_metrics_shifted_mask_hand_values():
    """Square shifted 3 px: boundary distances (28 edge px): 0 x10, 1 x4, 2 x4, 3 x10 in both directions.

    HD95 = 95th percentile = 3; ASD (symmetric) = (4*1 + 4*2 + 10*3) / 28 = 1.5;
    overlap 8x5 = 40 -> Dice = 80 / 128 = 0.625, Jaccard = 40 / 88.
    """
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    masks = to_condition_values(_square_masks().numpy().astype(np.uint8))
    sq = reconstruction_metrics(Identity(shift=3), images, masks)["masks"]["mask_0"]
    assert sq["hd95"] == pytest.approx(3.0)
    assert sq["asd"] == pytest.approx(42 / 28)
    assert sq["dice"] == pytest.approx(0.625)
    assert sq["jaccard"] == pytest.approx(40 / 88)
    assert sq["n_pred_empty"] == 0


# ------------------------------------------------------------------------------------------ tuning


@pytest.fixture(scope="module")
def ct_slices(ct_small):
    """8 axial slices of the real CT, padded square with air, area-downsampled to 32x32.

    Returns (images in [-1, 1] [8,1,32,32], masks in [-0.5, 0.5] [8,3,32,32]: body (HU > -500),
    dense (HU > 150: contrast vessels / bone) and an always-empty channel).
    """
    hu = np.asarray(ct_small.dataobj, dtype=np.float32)  # (X, Y, Z) = 122 x 101 x 30
    z = np.linspace(4, hu.shape[2] - 5, 8).round().astype(int)
    sl = hu[:, :, z].transpose(2, 0, 1)
    side = max(sl.shape[1:])
    sl = centre_crop_or_pad(sl, (side, side), fill=-1024.0)
    hu32 = F.interpolate(torch.from_numpy(np.ascontiguousarray(sl))[:, None], size=(32, 32), mode="area").numpy()
    binary = np.concatenate([hu32 > -500, hu32 > 150, np.zeros_like(hu32, bool)], axis=1).astype(np.uint8)
    return torch.from_numpy(hu_to_unit(hu32)), torch.from_numpy(to_condition_values(binary))


def test_tune_tiny_2d_on_real_ct(ct_slices, tmp_path):
    images, masks = ct_slices
    names = ["body", "dense", "empty"]
    torch.manual_seed(0)
    model = build_autoencoder(TINY_VAE_CONFIGS["2d"])
    before = reconstruction_metrics(model, images, masks, mask_names=names)
    cfg = {"steps": 100, "batch_size": 8, "lr": 1e-3, "seed": 0, "checkpoint_every": 50, "progress": False,
           "losses": {"l1_weight": 1.0, "kl_weight": 1e-6}}
    t0 = time.perf_counter()
    out = tune_vae(model, images, cfg, tmp_path)
    wall = time.perf_counter() - t0
    after = reconstruction_metrics(model, images, masks, mask_names=names)
    print(f"\n[vae 2d tiny] {out['seconds_per_step']:.4f} s/step, tune wall {wall:.1f} s; "
          f"L1 {before['image']['l1']:.4f} -> {after['image']['l1']:.4f}\n"
          f"before: {json.dumps(before)}\nafter: {json.dumps(after)}\nlatent stats: {out['latent_stats']}")
    # measured: L1 0.50 -> 0.05 (10x); assert 4x
    assert after["image"]["l1"] < before["image"]["l1"] / 4
    assert after["image"]["ssim"] > before["image"]["ssim"] + 0.3
    assert after["image"]["psnr"] > 20
    assert after["masks"]["empty"]["status"] == "empty"
    assert after["masks"]["body"]["n_reference"] == 8
    with open(out["loss_curve"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 101))
    assert rows[0]["l1"] and rows[0]["kl"] and rows[0]["adv_g"] == "nan"  # the GAN term is off
    assert np.mean([float(r["l1"]) for r in rows[-10:]]) < np.mean([float(r["l1"]) for r in rows[:10]]) / 3
    stats = json.loads((tmp_path / "latent_stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 4
    assert (tmp_path / "final" / "config.json").is_file()
    assert any((tmp_path / "final").glob("*.safetensors"))
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000100"
    with torch.no_grad():
        assert torch.allclose(reconstruct(load_autoencoder(tmp_path / "final").eval(), images),
                              reconstruct(model.eval(), images), atol=1e-5)


def test_tune_tiny_3d_maisi_runs_and_saves(tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder(TINY_VAE_CONFIGS["3d"])
    vols = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    out = tune_vae(model, vols, {"steps": 4, "batch_size": 1, "lr": 1e-3, "checkpoint_every": 0,
                                 "progress": False, "losses": {"ssim_weight": 0.1}}, tmp_path)
    print(f"\n[vae 3d tiny MAISI] {out['seconds_per_step']:.4f} s/step (batch 1, 16^3)")
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["config.json", "medsynth_vae.json",
                                                                       "model.safetensors"]
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000004"  # the loop's final checkpoint
    with torch.no_grad():
        assert torch.allclose(reconstruct(load_autoencoder(tmp_path / "final").eval(), vols),
                              reconstruct(model.eval(), vols), atol=1e-5)


def _tiny_vae() -> nn.Module:
    """The tiny 2D VAE with the same seeded initial weights every call."""
    torch.manual_seed(0)
    return build_autoencoder(TINY_VAE_CONFIGS["2d"])


class Interrupt(RuntimeError):
    pass


def test_resume_matches_uninterrupted_run(tmp_path):
    """Interrupted at step 5 (checkpoints every 2) then resumed == uninterrupted; GAN + SSIM + patches on."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    cfg = {"steps": 7, "batch_size": 2, "lr": 1e-3, "seed": 5, "patch_size": 16, "checkpoint_every": 2,
           "keep_checkpoints": 1, "progress": False,
           "losses": {"kl_weight": 1e-4, "ssim_weight": 0.2, "adv_weight": 0.1, "adv_warmup_steps": 2,
                      "adv_criterion": "hinge", "disc_channels": 8, "disc_layers": 1}}

    ref = _tiny_vae()
    tune_vae(ref, images, cfg, tmp_path / "ref")

    def stop_at_5(step, terms):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        tune_vae(_tiny_vae(), images, cfg, tmp_path / "run", on_step=stop_at_5)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-000004"
    torch.manual_seed(123)  # a different global RNG state before resuming must not matter
    resumed = _tiny_vae()
    out = tune_vae(resumed, images, cfg, tmp_path / "run")
    assert out["start_step"] == 4
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file

    da = load_file(str(tmp_path / "ref" / "checkpoints" / "step-000007" / "model.safetensors"))
    db = load_file(str(tmp_path / "run" / "checkpoints" / "step-000007" / "model.safetensors"))
    critic = [k for k in da if "discriminator" in k]
    assert critic and all(torch.equal(da[k], db[k]) for k in da)  # both players, the critic included
    assert (tmp_path / "ref" / "loss_curve.csv").read_text() == (tmp_path / "run" / "loss_curve.csv").read_text()
    rows = list(csv.DictReader((tmp_path / "run" / "loss_curve.csv").open()))
    assert [r["adv_g"] != "nan" for r in rows] == [False, False, True, True, True, True, True]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000007"]


def test_signal_checkpoints_and_the_rerun_finishes_the_same_model(tmp_path):
    """SIGUSR1 (SLURM's warning before a time limit) during step 2: checkpoint at 2, no final/; rerun == uninterrupted."""
    import os
    import signal

    g = torch.Generator().manual_seed(4)
    images = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    cfg = {"steps": 6, "batch_size": 2, "lr": 1e-3, "seed": 2, "checkpoint_every": 0, "progress": False}

    ref = _tiny_vae()
    tune_vae(ref, images, cfg, tmp_path / "ref")

    def signal_at_2(step, row):
        if step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled by the loop: it checkpoints this step and stops

    out = tune_vae(_tiny_vae(), images, cfg, tmp_path / "run", on_step=signal_at_2)
    assert out["status"] == "preempted" and out["final_dir"] is None
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-000002"
    assert not (tmp_path / "run" / "final").exists()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored
    resumed = _tiny_vae()
    out = tune_vae(resumed, images, cfg, tmp_path / "run")
    assert out["status"] == "completed" and out["start_step"] == 2
    a, b = ref.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ref" / "loss_curve.csv").read_text() == (tmp_path / "run" / "loss_curve.csv").read_text()


VAE_WORKER = '''
import json, os, sys
sys.path.insert(0, {repo!r})
import torch
from medsynth.launch import relaunch
from medsynth.vae import TINY_VAE_CONFIGS, build_autoencoder, tune_vae

out, processes = sys.argv[1], int(sys.argv[2])
if relaunch(processes):
    raise SystemExit(0)
torch.set_num_threads(1)
images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
torch.manual_seed(0)
model = build_autoencoder(TINY_VAE_CONFIGS["2d"])
cfg = {{"steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 2, "patch_size": 16, "checkpoint_every": 2,
       "progress": False, "losses": {{"ssim_weight": 0.2}}}}
summary = tune_vae(model, images, cfg, out)
weights = torch.cat([p.detach().flatten() for p in model.parameters()])
torch.save(weights, os.path.join(out, f"weights_rank{{os.environ.get('RANK', '0')}}.pt"))
json.dump({{k: summary[k] for k in ("status", "processes", "final_dir")}},
          open(os.path.join(out, f"summary_rank{{os.environ.get('RANK', '0')}}.json"), "w"))
'''


def test_two_processes_reproduce_the_one_process_run(tmp_path):
    """Two accelerate workers (CPU, gloo) split each global batch: same curve and weights as one process."""
    import os
    import subprocess
    import sys

    script = tmp_path / "vae_worker.py"
    script.write_text(VAE_WORKER.format(repo=str(Path(__file__).resolve().parents[1])))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    for name, n in (("one", 1), ("two", 2)):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / name), str(n)], capture_output=True,
                              text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "weights_rank0.pt")
    w0, w1 = (torch.load(tmp_path / "two" / f"weights_rank{r}.pt") for r in (0, 1))
    assert torch.equal(w0, w1)  # the replicas stay identical
    # equal up to the order of the float reductions (measured: max |diff| 3e-5 over 233k weights after 4 steps)
    assert torch.allclose(one, w0, atol=1e-4, rtol=1e-4) and not torch.equal(one, torch.zeros_like(one))
    s0, s1 = (json.loads((tmp_path / "two" / f"summary_rank{r}.json").read_text()) for r in (0, 1))
    assert s0["processes"] == 2 and s0["final_dir"] and s1["final_dir"] is None  # only rank 0 writes
    a = pd.read_csv(tmp_path / "one" / "loss_curve.csv")
    b = pd.read_csv(tmp_path / "two" / "loss_curve.csv")
    assert len(a) == len(b) == 4
    assert np.allclose(a["l1"], b["l1"], rtol=1e-4) and np.allclose(a["ssim"], b["ssim"], rtol=1e-4)
    assert (tmp_path / "two" / "final").is_dir() and (tmp_path / "two" / "latent_stats.json").is_file()


def test_grey_ct_into_a_pretrained_rgb_vae(ct_slices, tmp_path):
    """A Stable-Diffusion-style 3-channel VAE (diffusers AutoencoderKL, the real class at a tiny size, saved in
    a pipeline repo's vae/ subfolder) takes 1-channel CT: R = G = B in, the channel mean out; it tunes."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    rgb = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=32)
    rgb.save_pretrained(tmp_path / "sd" / "vae")
    model = build_autoencoder({"spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                               "pretrained": str(tmp_path / "sd"), "pretrained_subfolder": "vae"})
    images, _ = ct_slices
    x = images[:2]
    with torch.no_grad():
        mean, logvar = encode(model, x)
        want = rgb.encode(x.repeat(1, 3, 1, 1)).latent_dist
        assert torch.allclose(mean, want.mean, atol=1e-6) and torch.allclose(logvar, want.logvar, atol=1e-6)
        out = decode(model, mean)
        assert out.shape == x.shape
        assert torch.allclose(out, rgb.decode(mean).sample.mean(dim=1, keepdim=True), atol=1e-6)
    result = tune_vae(model, images, {"steps": 2, "batch_size": 4, "lr": 1e-4, "seed": 0, "progress": False,
                                      "losses": {"l1_weight": 1.0, "kl_weight": 1e-6}}, tmp_path / "run")
    assert result["status"] == "completed" and result["steps"] == 2
    reloaded = load_autoencoder(tmp_path / "run" / "final")
    with torch.no_grad():
        assert decode(reloaded, encode(reloaded, x)[0]).shape == x.shape
    with pytest.raises(PretrainedUnavailableError, match="2-channel images cannot"):
        build_autoencoder({"spatial_dims": 2, "in_channels": 2, "out_channels": 2,
                           "pretrained": str(tmp_path / "sd"), "pretrained_subfolder": "vae"})


def test_latent_pack_folds_the_latent_grid_into_channels_and_round_trips(tmp_path):
    from medsynth.vae.models import latent_pack, model_config, save_autoencoder

    plain = build_autoencoder({**TINY_VAE_CONFIGS["2d"], "block_out_channels": [16, 32]}).eval()
    packed = build_autoencoder({**TINY_VAE_CONFIGS["2d"], "block_out_channels": [16, 32], "latent_pack": 2}).eval()
    packed.load_state_dict(plain.state_dict())  # the same network: only the latents' layout differs
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        mean, logvar = encode(plain, x)
        pmean, plogvar = encode(packed, x)
        assert tuple(mean.shape) == (2, 4, 16, 16) and tuple(pmean.shape) == (2, 16, 8, 8)
        assert torch.equal(pmean, F.pixel_unshuffle(mean, 2)) and torch.equal(plogvar, F.pixel_unshuffle(logvar, 2))
        assert torch.equal(decode(packed, pmean), decode(plain, mean))
        assert torch.equal(reconstruct(packed, x), reconstruct(plain, x))
    loaded = load_autoencoder(save_autoencoder(packed, tmp_path / "vae"))
    assert latent_pack(model_config(loaded)) == 2  # the folding travels with the saved model
    with pytest.raises(Exception, match="latent_pack"):  # 2D only: the 3D section has no such key
        build_autoencoder({**TINY_VAE_CONFIGS["3d"], "latent_pack": 2})


# ------------------------------------------------------------------------------------------ frozen (steps 0)


def test_frozen_pretrained_2d_vae_through_the_stage(tmp_path):
    """``steps: 0`` (ViCTr's frozen VAE encoder): a tiny pretrained diffusers AutoencoderKL folder through rule
    vae's stage function: no optimizer step, no checkpoint, every declared output (final/ with the pretrained
    weights bit for bit, the statistics of the training images' latents, reconstruction.csv of the test
    split, a loss curve with the columns of a tuned run's and no rows, train_config.json)."""
    from diffusers import AutoencoderKL

    from conftest import ct_slice_shard
    from medsynth.io.trainsets import load_slices, select_rows
    from medsynth.vae.stage import run_vae

    torch.manual_seed(0)
    released = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32, 32),
                             down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                             layers_per_block=1, norm_num_groups=8, sample_size=32)
    released.save_pretrained(tmp_path / "released")
    shards = ct_slice_shard(tmp_path / "shard", ["soft", "lung", "bone", "contrast", "empty"], n=12)
    cfg = {"model": {**TINY_VAE_CONFIGS["2d"], "pretrained": str(tmp_path / "released")}, "steps": 0,
           "batch_size": 4, "checkpoint_every": 1, "progress": False, "seed": 1, "stats_batch_size": 4}
    summary = run_vae(shards, tmp_path / "vae", cfg)
    out = tmp_path / "vae"
    assert summary["status"] == "completed" and summary["steps"] == 0 and summary["last_terms"] == {}
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    frozen = load_autoencoder(out / "final")  # the saved format of a tuned run: every consumer loads it unchanged
    want = AutoencoderKL.from_pretrained(str(tmp_path / "released")).state_dict()
    got = frozen.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    index, images, _, _ = load_slices(shards)
    train = torch.as_tensor(images[select_rows(index, {"split": ["train"]})]).float()
    stats = load_latent_statistics(out / "latent_stats.json")
    expected = latent_statistics(frozen.eval(), train, 4)
    assert np.allclose(stats["mean"], expected["mean"], atol=1e-6) and np.allclose(stats["std"], expected["std"], atol=1e-6)
    recon = pd.read_csv(out / "reconstruction.csv").set_index("target")
    assert recon.loc["image", "split"] == "test" and np.isfinite(recon.loc["image", ["ssim", "psnr"]]).all()
    curve = pd.read_csv(out / "loss_curve.csv")
    assert curve.empty and list(curve.columns) == ["step", "lr", "grad_norm", *VAELoss.TERMS, "loss"]
    record = json.loads((out / "train_config.json").read_text())
    assert record["steps"] == 0 and record["frozen"] is True and record["processes"] == 1


def _two_shards(root: Path) -> list[str]:
    """Two slice shards in two folders (cases ``ct``/``mr`` and ``ct_b``/``mr_b``): 10 + 7 train, 2 + 1 test slices."""
    from conftest import ct_slice_shard

    names = ["soft", "lung", "bone", "contrast", "empty"]
    first, second = ct_slice_shard(root / "a", names, n=12), ct_slice_shard(root / "b", names, n=8)
    index = pd.read_csv(second[1])
    index.assign(case_id=index["case_id"] + "_b", patient_id="q").to_csv(second[1], index=False)
    return first + second


def _record_reads(monkeypatch) -> list[tuple[str, dict | None]]:
    """Every ``load_slices`` / ``iter_slices`` call of the stage, as ``(function, select)``."""
    import medsynth.vae.stage as stage

    calls: list[tuple[str, dict | None]] = []
    for name in ("load_slices", "iter_slices"):
        def recorded(shards, select=None, _name=name, _real=getattr(stage, name)):
            calls.append((_name, None if select is None else {k: list(v) for k, v in select.items()}))
            return _real(shards, select)
        monkeypatch.setattr(stage, name, recorded)
    return calls


def test_frozen_stage_streams_the_training_shards(tmp_path, monkeypatch):
    """A frozen VAE reads no whole training set: the statistics stream the train samples shard by shard (bit
    for bit those of all of them at once, a batch straddling the shards), the reconstruction table reads the
    test samples only; with no eval_split sample it falls back to the train samples (read with a select)."""
    from diffusers import AutoencoderKL

    from medsynth.io.trainsets import load_slices
    from medsynth.vae.stage import run_vae

    torch.manual_seed(0)
    AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=8, sample_size=32).save_pretrained(tmp_path / "released")
    shards = _two_shards(tmp_path / "shards")
    cfg = {"model": {**TINY_VAE_CONFIGS["2d"], "pretrained": str(tmp_path / "released")}, "steps": 0,
           "batch_size": 4, "progress": False, "seed": 1, "stats_batch_size": 4, "include_masks": True}
    calls = _record_reads(monkeypatch)
    run_vae(shards, tmp_path / "vae", cfg)
    assert calls == [("iter_slices", {"split": ["train"]}), ("iter_slices", {"split": ["test"]})]
    _, train, _, _ = load_slices(shards, {"split": ["train"]})
    assert len(train) == 17  # 10 + 7: the third batch of 4 holds 2 slices of each shard
    frozen = load_autoencoder(tmp_path / "vae" / "final")
    assert load_latent_statistics(tmp_path / "vae" / "latent_stats.json") == latent_statistics(frozen, train, 4)
    recon = pd.read_csv(tmp_path / "vae" / "reconstruction.csv").set_index("target")
    assert recon.loc["image", "split"] == "test" and recon.loc["image", "n"] == 3

    calls.clear()
    run_vae(shards, tmp_path / "fallback", {**cfg, "eval_split": "val"})
    assert calls == [("iter_slices", {"split": ["train"]}), ("iter_slices", {"split": ["val"]}),
                     ("load_slices", {"split": ["train"]})]
    assert pd.read_csv(tmp_path / "fallback" / "reconstruction.csv").set_index("target").loc["image", "n"] == 17


def test_tuning_stage_reads_the_train_and_eval_samples_apart(tmp_path, monkeypatch):
    """Tuning holds no fit set in memory: never load_slices (the train samples + their masks are a ShardDataset
    read batch by batch, its latent statistics streamed); the reconstruction table reads the test samples only."""
    import medsynth.io.shard_dataset as shard_dataset
    from medsynth.vae.stage import run_vae

    shards = _two_shards(tmp_path / "shards")
    calls = _record_reads(monkeypatch)
    batches: list[int] = []
    real = shard_dataset.ShardDataset.get_batch
    monkeypatch.setattr(shard_dataset.ShardDataset, "get_batch",
                        lambda self, indices: batches.append(len(indices)) or real(self, indices))
    run_vae(shards, tmp_path / "vae", {"model": TINY_VAE_CONFIGS["2d"], "steps": 1, "batch_size": 2,
                                       "checkpoint_every": 0, "progress": False, "include_masks": True})
    assert calls == [("iter_slices", {"split": ["test"]})]
    assert 2 in batches  # the step's batch came from the shards
    assert pd.read_csv(tmp_path / "vae" / "reconstruction.csv").set_index("target").loc["image", "n"] == 3


def test_frozen_random_vae_is_refused_when_the_config_is_read(tmp_path):
    from medsynth.settings import check_frozen_vae, section
    from medsynth.vae.models import vae_section

    with pytest.raises(ValueError, match=r"vae\.steps.*vae\.model\.pretrained"):
        vae_section({"steps": 0})
    with pytest.raises(ValueError, match=r"volumes\.vae\.steps.*volumes\.vae\.model\.pretrained"):
        vae_section({"steps": 0, "model": {"spatial_dims": 3}})
    with pytest.raises(ValueError, match=r"vae\.steps.*vae\.model\.pretrained"):
        check_frozen_vae(section("vae", {"steps": 0}), "vae")  # what rules/vae.smk calls as the workflow starts
    assert vae_section({"steps": 0, "model": {"pretrained": "some/vae"}})["steps"] == 0  # the schema allows 0
    assert section("vae")["steps"] == 200 and section("volumes")["vae"]["steps"] == 100  # defaults unchanged


def test_loss_curves_figure_notes_a_curve_without_rows(tmp_path):
    """A frozen VAE's curve (the columns, no rows) is absent from the figure, named in a note: no crash."""
    from medsynth.evaluation_figures import loss_curves

    (tmp_path / "vae.csv").write_text("step,lr,grad_norm,l1,loss\n")
    pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.5, 0.25]}).to_csv(tmp_path / "base.csv", index=False)
    assert loss_curves({"vae": tmp_path / "vae.csv", "base": tmp_path / "base.csv"}, tmp_path / "a.png").is_file()
    assert loss_curves({"vae": tmp_path / "vae.csv"}, tmp_path / "b.png").is_file()
