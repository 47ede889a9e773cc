"""The 3D path (MAISI-v2 / MedSyn2 3D studies) on a tiny volume shard cut from the shipped real CT.

Shard: six 16^3 volumes of resources/example_data/ct/upper_abdomen_ct_3mm.nii.gz (crops of the scan
and of its left-right mirror, resized with :func:`medsynth.preprocess.trainsets.volume_sample`), five
threshold "condition masks" (liver = soft tissue band, lungs = air, bone, kidneys = upper band,
spleen = empty), four train and two test volumes. The tiny 3D MAISI VAE (16^3 -> 4 x 4^3), the tiny
``maisi_unet3d`` (mask through the ControlNet only, MAISI-v2) and the tiny 3D ``medsyn2_dit``
(x-prediction, MedSyn2's v-loss), a few optimizer steps each, Euler / Heun / Dopri5 sampling, and
the 2.5D per-window x plane FD of MedSyn2 Table 1 with a tiny self-trained 2D extractor. One thread.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file

from medsynth.evaluation import RunFiles, RunSettings, evaluate_volume_run, extractor_input_size
from medsynth.generator.objective import RegionContrastive
from medsynth.generator import GeneratorStep, build_latent_data, load_slices, run_base
from medsynth.vae.stage import run_vae
from medsynth.io.generated import load_generated
from medsynth.generator.sampling import sample_condition_set
from medsynth.models.backbones import build_backbone, mask_routing, predict, predict_velocity
from tiny_backbones import TINY_CONFIGS
from medsynth.objectives import interpolate, velocity_from_x0, x_prediction_v_loss
from medsynth.vae import TINY_VAE_CONFIGS, load_autoencoder, load_latent_statistics

from conftest import ct_volume_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
CT = REPO / "resources" / "example_data" / "ct" / "upper_abdomen_ct_3mm.nii.gz"
NAMES = ["liver", "lungs", "bone", "kidneys", "spleen"]
SIZE = 16
N_VOLUMES = 6
TEST_VOLUMES = (2, 5)
CROP_STEP = 4  # voxels cropped off the x axis per volume: distinct volumes from one scan
LATENT = 4  # latent channels of the tiny 3D VAE
HU_RANGE = [-1024, 1024]
WINDOWS = {"lung": [-600, 1500], "soft_tissue": [50, 350]}
EXTRACTOR_SIZE = 64  # the 2D extractor is trained on 64x64 slices; the 16^3 volumes' slices are resized

VAE_CFG = {"model": dict(TINY_VAE_CONFIGS["3d"]), "steps": 2, "batch_size": 2, "checkpoint_every": 0,
           "progress": False, "seed": 1, "stats_batch_size": 4}
STAGE = {"steps": 2, "batch_size": 2, "lr": 0.01, "checkpoint_every": 0, "progress": False, "seed": 3,
         "cond_dropout": 0.25, "warmup_steps": 0, "select": {"split": ["train"]}}
SAMPLING = {"guidance_scale": 2.0, "batch_size": 2, "seed": 5, "hu_qc": {"enabled": True, "max_tries": 2},
            "dopri5": {"max_num_steps": 1000}}


def _backbone(kind: str) -> dict:
    cfg = copy.deepcopy(TINY_CONFIGS[kind])
    if kind == "maisi_unet3d":  # MAISI-v2: the mask enters through the ControlNet only
        cfg["params"]["unet_params"]["in_channels"] = LATENT
        cfg["params"]["controlnet_params"]["conditioning_embedding_in_channels"] = len(NAMES)
        cfg["params"]["mask_input"] = "control"
    else:  # MedSyn2: mask latents concatenated, x-prediction
        cfg["params"]["in_channels"] = LATENT + len(NAMES)
    return cfg


GENERATORS = {kind: {"backbone": _backbone(kind), "text_encoder": {"type": "minilm"}, "max_length": 16, "threads": 1}
              for kind in ("maisi_unet3d", "medsyn2_dit")}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return ct_volume_shard(tmp_path_factory.mktemp("volumes"), NAMES, N_VOLUMES, TEST_VOLUMES, SIZE, CROP_STEP,
                           mirror_half=True)


@pytest.fixture(scope="module")
def vae3d(tmp_path_factory, shards):
    root = tmp_path_factory.mktemp("vae3d")
    summary = run_vae(shards, root, VAE_CFG)
    return root, summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shards, vae3d, text_encoder):
    root = tmp_path_factory.mktemp("gen3d")
    vae_dir, _ = vae3d
    results = {kind: run_base(shards, vae_dir / "final", vae_dir / "latent_stats.json", root / kind, gen, STAGE,
                              text_encoder=text_encoder)
               for kind, gen in GENERATORS.items()}
    return root, results


# ------------------------------------------------------------------------------------------------ VAE, data
def test_volume_shard_and_vae(shards, vae3d):
    index, images, masks, names = load_slices(shards)
    assert images.shape == (N_VOLUMES, 1, SIZE, SIZE, SIZE) and masks.shape == (N_VOLUMES, len(NAMES), SIZE, SIZE, SIZE)
    assert names == NAMES and set(index["slice"]) == {-1}
    root, summary = vae3d
    assert summary["steps"] == VAE_CFG["steps"]
    stats = load_latent_statistics(root / "latent_stats.json")
    assert len(stats["mean"]) == LATENT and all(s > 0 for s in stats["std"])
    assert len(pd.read_csv(root / "loss_curve.csv")) == VAE_CFG["steps"]
    recon = pd.read_csv(root / "reconstruction.csv").set_index("target")
    assert recon.loc["image", "n"] == len(TEST_VOLUMES) and np.isfinite(recon.loc["image", ["ssim", "psnr"]]).all()
    assert recon.loc["liver", "status"] == "ok" and recon.loc["spleen", "status"] == "empty"
    vae = load_autoencoder(root / "final")
    assert vae.medsynth_vae_config["spatial_dims"] == 3


@pytest.fixture(scope="module")
def latents(shards, vae3d, text_encoder):
    root, _ = vae3d
    vae = load_autoencoder(root / "final").eval()
    return build_latent_data(shards, vae, load_latent_statistics(root / "latent_stats.json"), text_encoder,
                             {"split": ["train"]}, max_length=16)


def test_latent_data_of_volumes(latents):
    data = latents
    n = N_VOLUMES - len(TEST_VOLUMES)
    latent_size = SIZE // 4  # the tiny MAISI VAE's 4x compression
    assert tuple(data.dataset.tensors["latent"].shape) == (n, LATENT, *(latent_size,) * 3)
    assert tuple(data.dataset.tensors["mask"].shape) == (n, len(NAMES), *(latent_size,) * 3)
    assert data.dataset.tensors["mask"].abs().max() <= 0.5
    assert data.prompts and all("upper abdomen" in p for p in data.prompts)  # compound prompts per volume


# ------------------------------------------------------------------------------------------------ backbones
def test_maisi_mask_goes_to_the_controlnet_and_trains(trained):
    model = build_backbone(GENERATORS["maisi_unet3d"]["backbone"]).eval()
    assert mask_routing(model) == (False, True)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():  # ControlNet output convolutions start at zero: make them matter
        with torch.no_grad():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(2, LATENT, 4, 4, 4, generator=g)
    mask = torch.rand(2, len(NAMES), 4, 4, 4, generator=g) - 0.5
    text, t = torch.randn(2, 6, 384, generator=g), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        routed = predict(model, x, t, text, mask=mask)
        down, mid = model.controlnet(x, t * 1000, mask, context=text)
        monai = model.unet(x, t * 1000, context=text, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid)  # MONAI's own (in-place) forward
        other = predict(model, x, t, text, mask=-mask)
    torch.testing.assert_close(routed, monai)
    assert not torch.allclose(routed, other)
    root, results = trained
    assert results["maisi_unet3d"].status == "completed"
    final = root / "maisi_unet3d" / "final"
    saved = build_backbone({**GENERATORS["maisi_unet3d"]["backbone"], "pretrained": str(final)})
    zero_convs = [p for n, p in saved.named_parameters() if n.startswith("controlnet.controlnet_")]
    assert zero_convs and any(p.abs().max() > 0 for p in zero_convs)  # the ControlNet's outputs were trained


def test_x0_backbone_trains_with_the_x_prediction_v_loss(latents, trained):
    model = build_backbone(GENERATORS["medsyn2_dit"]["backbone"]).eval()
    data = latents
    step = GeneratorStep(data.tokens, data.keep, data.null_id)
    batch = data.dataset.get_batch([0, 1])
    terms = step(model, batch, 0, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws as the step: t, then the noise
    from medsynth.objectives import sample_timesteps

    t = sample_timesteps(2, g, "uniform", dtype=batch["latent"].dtype)
    x1 = torch.randn(batch["latent"].shape, generator=g)
    x_t = interpolate(batch["latent"], x1, t)
    text, keep = data.tokens[batch["prompt"]], data.keep[batch["prompt"]]
    with torch.no_grad():
        x0_hat = predict(model, x_t, t, text, keep, mask=batch["mask"]).float()
        expected = x_prediction_v_loss(x0_hat, batch["latent"], x1, t)
        velocity = predict_velocity(model, x_t, t, text, keep, mask=batch["mask"])
    torch.testing.assert_close(terms["flow"].detach(), expected)
    torch.testing.assert_close(velocity, velocity_from_x0(x0_hat, x_t, t))
    assert trained[1]["medsyn2_dit"].status == "completed"


def test_maisi_v2_region_contrastive_term_on_volumes(latents):
    """MAISI-v2's ROI contrastive term: the ROI channel removed from the ControlNet's mask changes the field."""
    model = build_backbone(GENERATORS["maisi_unet3d"]["backbone"])
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        with torch.no_grad():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    data = latents
    term = RegionContrastive(roi_channel=NAMES.index("liver"), delta=2.0, dilation=1,
                             schedule=[(0, 0.01), (50, 0.001)], total_steps=STAGE["steps"])
    step = GeneratorStep(data.tokens, data.keep, data.null_id, extras=[term])
    terms = step(model, data.dataset.get_batch([0, 1]), 0, torch.Generator().manual_seed(2))
    assert torch.isfinite(terms["loss"]) and terms["contrastive_roi_distance"] > 0
    terms["loss"].backward()  # the ControlNet's residuals must not break autograd (MONAI adds them in place)


def test_dimension_mismatch_is_refused(latents):
    from medsynth.generator.loaders import check_channels

    flat = copy.deepcopy(TINY_CONFIGS["unet2d_condition"])
    flat["params"]["in_channels"] = LATENT + len(NAMES)
    with pytest.raises(ValueError, match="3D"):
        check_channels(build_backbone(flat), latents)
    check_channels(build_backbone(GENERATORS["maisi_unet3d"]["backbone"]), latents)
    wrong = _backbone("maisi_unet3d")
    wrong["params"]["controlnet_params"]["conditioning_embedding_in_channels"] = 2
    with pytest.raises(ValueError, match="conditioning_embedding_in_channels"):
        check_channels(build_backbone(wrong), latents)


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_victr_stages_and_lora_sampling_on_volumes(kind, shards, vae3d, trained, text_encoder, tmp_path):
    """Stage 1 (EWC) and a LoRA stage 2 (Tweedie + consistency + MAISI-v2 contrastive) on volume latents;
    sampling merges / applies the adapter on the stage-1 model (1x1x1 Conv3d adapters stay unmerged)."""
    from medsynth.generator import run_stage1, run_stage2

    vae_dir, _ = vae3d
    root, _ = trained
    vae, stats, gen = vae_dir / "final", vae_dir / "latent_stats.json", GENERATORS[kind]
    stage1 = {**STAGE, "ewc": {"fisher_batches": 1, "fisher_batch_size": 2, "top_fraction": 0.2, "lambda": 10.0}}
    stage2 = {**STAGE, "method": "lora", "objective": "tweedie", "lora": {"rank": 2, "alpha": 2.0},
              "consistency": {"temporal_weight": 0.1, "spatial_weight": 0.1},
              "contrastive": {"enabled": True, "roi": "liver"}, "severity_prompt": False}
    run_stage1(shards, vae, stats, root / kind / "final", tmp_path / "stage1", gen, stage1, STAGE,
               text_encoder=text_encoder)
    result, _ = run_stage2(shards, vae, stats, tmp_path / "stage1" / "final", tmp_path / "stage1" / "ewc.safetensors",
                           tmp_path / "stage2", gen, stage2, text_encoder=text_encoder)
    assert result.status == "completed"
    paths = [tmp_path / f"set.{ext}" for ext in ("safetensors", "csv", "json")]
    sample_condition_set(shards, vae, stats, tmp_path / "stage2" / "final", tmp_path / "stage1" / "final", *paths,
                         gen, stage2, {"batch_size": 2, "guidance_scale": 1.0, "seed": 0}, "euler-2", {"split": ["test"]},
                         text_encoder=text_encoder)
    images, _, _ = load_generated(paths[0])
    assert images.shape == (len(TEST_VOLUMES), 1, SIZE, SIZE, SIZE) and np.isfinite(images).all()


# ------------------------------------------------------------------------------------------------ sampling + metrics
@pytest.fixture(scope="module")
def sampled(tmp_path_factory, shards, vae3d, trained, text_encoder):
    out = tmp_path_factory.mktemp("sampled")
    vae_dir, _ = vae3d
    root, _ = trained
    runs = {"maisi_unet3d": ["euler-2", "heun-2", "dopri5-auto"], "medsyn2_dit": ["euler-2"]}
    files = {}
    for kind, kind_runs in runs.items():
        for run in kind_runs:
            paths = [out / f"{kind}-{run}.{ext}" for ext in ("safetensors", "csv", "json")]
            sample_condition_set(shards, vae_dir / "final", vae_dir / "latent_stats.json", root / kind / "final",
                                 None, *paths, GENERATORS[kind], {"objective": "flow", "severity_prompt": False},
                                 SAMPLING, run,
                                 {"split": ["test"]}, text_encoder=text_encoder)
            files[(kind, run)] = paths
    return files


def test_sampling_writes_volume_sets(sampled, shards):
    shape = (len(TEST_VOLUMES), 1, SIZE, SIZE, SIZE)
    for (kind, run), (tensors, index, summary) in sampled.items():
        images, masks, names = load_generated(tensors)
        assert images.shape == shape and images.dtype == np.float32 and np.abs(images).max() <= 1.0
        assert masks.shape == (len(TEST_VOLUMES), len(NAMES), SIZE, SIZE, SIZE) and masks.dtype == np.uint8
        assert names == NAMES
        assert len(pd.read_csv(index)) == len(TEST_VOLUMES)
        info = json.loads(Path(summary).read_text())
        assert info["run"] == run and info["seconds"] > 0 and info["network_evals"] == 2 * info["nfe"]
        assert info["hu_qc"]["enabled"] and 0.0 <= info["hu_qc"]["pass_rate"] <= 1.0
        if run.endswith("-2"):
            assert info["nfe"] == (4 if run.startswith("heun") else 2)
    real_masks = load_slices(shards)[2][list(TEST_VOLUMES)] > 0
    stored = load_file(str(sampled[("maisi_unet3d", "euler-2")][0]))["masks"]
    np.testing.assert_array_equal(stored.astype(bool), real_masks)  # the conditioning masks at image resolution


@pytest.fixture(scope="module")
def extractor(tmp_path_factory, shards):
    """A tiny 2D segmenter trained for a few steps on 64x64 axial slices of the real volumes."""
    from medsynth.downstream import train_segmenter

    _, images, masks, _ = load_slices(shards)
    x = torch.from_numpy(images).permute(0, 4, 1, 2, 3).reshape(-1, 1, SIZE, SIZE)
    y = torch.from_numpy((masks > 0).astype(np.float32)).permute(0, 4, 1, 2, 3).reshape(-1, len(NAMES), SIZE, SIZE)
    size = (EXTRACTOR_SIZE, EXTRACTOR_SIZE)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    y = (torch.nn.functional.interpolate(y, size=size, mode="nearest") > 0.5).float()
    out = tmp_path_factory.mktemp("downstream") / "real"
    cfg = {"model": {"type": "unet", "params": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
           "steps": 2, "batch_size": 4, "lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 0, "seed": 0,
           "checkpoint_every": 0, "progress": False, "threads": 1}
    _, result = train_segmenter(x, y, cfg, out)
    assert result.status == "completed"
    return Path(result.final_dir)


def test_volume_metrics_feed_medsyn2_table1(sampled, shards, extractor, tmp_path):
    from medsynth.downstream import load_segmenter
    from medsynth.tables.builders import medsyn2_table1

    metrics_cfg = {"batch_size": 16, "kid_subset_size": 4, "central_fraction": 0.4,
                   "extractor_size": [EXTRACTOR_SIZE, EXTRACTOR_SIZE]}
    intensity_cfg = {"ct_hu_range": HU_RANGE, "windows": WINDOWS}
    assert extractor_input_size(load_segmenter(extractor), metrics_cfg) == [EXTRACTOR_SIZE] * 2
    tensors, index, summary = sampled[("medsyn2_dit", "euler-2")]
    grid = {"spacing_mm": [3.0, 3.0, 3.0], "size": [SIZE * 2] * 3}
    files = RunFiles(tensors, index, summary, shards, extractor)
    settings = RunSettings(metrics_cfg, intensity_cfg, {"split": ["test"]}, grid=grid)
    record = evaluate_volume_run(files, tmp_path / "metrics.json", settings, "base", "euler-2")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["image_size"] == [SIZE] * 3 and saved["n_real"] == len(TEST_VOLUMES)
    cells = {(w["window"], w["plane"]): w for w in saved["windowed"]}
    planes = ["XY", "YZ", "ZX"]
    assert set(cells) == {(w, p) for w in [*WINDOWS, "mean"] for p in [*planes, "mean"]} - {
        ("mean", p) for p in planes}
    assert all(c["status"] == "ok" and np.isfinite(c["fd"]) and c["fd"] >= 0 for c in cells.values())
    assert set(saved["fd_self"]["per_plane"]) == set(planes) and np.isfinite(saved["fd_self"]["value"])
    assert "self-trained unet encoder" in saved["fd_self"]["extractor"]
    assert saved["mask_fidelity"]["distance_unit"] == "mm"
    assert saved["mask_fidelity"]["generated_vs_gt"]["spleen"]["status"] == "empty"
    assert saved["sampling"]["nfe"] == 2 and record["fid"]["status"].startswith(("ok", "unavailable"))
    table = medsyn2_table1(saved, REPO / "config" / "paper_reported")
    assert set(table["plane"]) == {*planes, "mean"}
    lung_xy = table[(table["window"] == "lung") & (table["plane"] == "XY")].iloc[0]
    assert isinstance(lung_xy["paper FID (RadImageNet ResNet-50)"], float)
    assert lung_xy["FID (RadImageNet ResNet-50)"] == "unavailable: metrics.radimagenet_pretrained_path is not set"
    # MedSyn2 Tables 2 / 3 (no CT-CLIP weights, no reports or labels in this index): the cells say why
    from medsynth.tables.medsyn2_clip import medsyn2_table2, medsyn2_table3

    clip = saved["clip_scores"]["ct_clip"]
    assert clip["i2i"]["status"].startswith("unavailable: metrics.ct_clip_pretrained_path is not set")
    assert clip["t2i"]["status"].startswith("not applicable: no reports in the training-set index")
    assert clip["zero_shot"]["status"].startswith("unavailable: the case table has no CT-RATE abnormality labels")
    assert saved["clip_scores"]["pillar0"]["status"].startswith("unavailable: no Pillar-0 loader")
    ours2 = medsyn2_table2(saved, REPO / "config" / "paper_reported").set_index(["source", "from"])
    assert ours2.loc[("MedSyn2", "ours (base/euler-2)"), "CT-CLIP I2I (%)"] == (
        "unavailable: metrics.ct_clip_pretrained_path is not set")
    ours3 = medsyn2_table3(saved, REPO / "config" / "paper_reported")
    assert ours3.iloc[1]["AUROC (%)"] == "unavailable: the case table has no CT-RATE abnormality labels"


# ------------------------------------------------------------------------------------------------ frozen VAE
def test_frozen_released_maisi_vae_on_volumes(shards, tmp_path):
    """``volumes.vae.steps: 0`` (MAISI-v2 reuses MAISI's VAE frozen): the release's state dict file
    (``models/autoencoder_v1.pt``, a tiny MAISI VAE) through rule volume_vae's stage function: final/ holds its
    weights bit for bit, the statistics and the reconstruction table are written, the curve has no rows."""
    from medsynth.vae import build_autoencoder

    torch.manual_seed(0)
    released = build_autoencoder(dict(TINY_VAE_CONFIGS["3d"]))
    (tmp_path / "models").mkdir()
    torch.save(released.state_dict(), tmp_path / "models" / "autoencoder_v1.pt")
    cfg = {**VAE_CFG, "model": {**TINY_VAE_CONFIGS["3d"], "pretrained": str(tmp_path / "models" / "autoencoder_v1.pt")},
           "steps": 0}
    summary = run_vae(shards, tmp_path / "vae", cfg)
    root = tmp_path / "vae"
    assert summary["status"] == "completed" and summary["steps"] == 0 and not (root / "checkpoints").exists()
    vae = load_autoencoder(root / "final")
    want, got = released.state_dict(), vae.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    stats = load_latent_statistics(root / "latent_stats.json")
    assert len(stats["mean"]) == LATENT and all(s > 0 for s in stats["std"])
    recon = pd.read_csv(root / "reconstruction.csv").set_index("target")
    assert recon.loc["image", "n"] == len(TEST_VOLUMES) and np.isfinite(recon.loc["image", ["ssim", "psnr"]]).all()
    assert pd.read_csv(root / "loss_curve.csv").empty
    assert json.loads((root / "train_config.json").read_text())["steps"] == 0
