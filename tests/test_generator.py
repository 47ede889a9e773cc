"""The generator glue (medsynth.generator) on tiny shards cut from the shipped real CT.

Shards: 24 axial slices of resources/example_data/ct/upper_abdomen_ct_3mm.nii.gz at 32x32, five
threshold "condition masks" (liver = soft tissue band, lungs = air, bone, kidneys = upper band,
spleen = empty), half of the slices labelled CT and half MR (the glue only reads the index). A tiny
diffusers VAE (32x32 -> 4 x 8 x 8) and the tiny UNet2DConditionModel with 4 + 5 input channels; a few
optimizer steps per stage, one thread.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medsynth.generator import (
    build_latent_data,
    load_slices,
    run_base,
    run_stage1,
    run_stage2,
    severity_fractions,
    severity_grades,
    slice_prompts,
    variant_config,
)
from tiny_backbones import TINY_CONFIGS
from medsynth.vae import TINY_VAE_CONFIGS
from medsynth.vae.stage import run_vae

from conftest import ct_slice_shard

NAMES = ["liver", "lungs", "bone", "kidneys", "spleen"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return ct_slice_shard(tmp_path_factory.mktemp("shards"), NAMES)


GEN = {
    "backbone": copy.deepcopy({**TINY_CONFIGS["unet2d_condition"]}),
    "text_encoder": {"type": "minilm"},
    "max_length": 16,
    "threads": 1,
    "severity": {"organ": "liver", "thresholds": [0.05, 0.15], "pathology": "liver involvement"},
}
GEN["backbone"]["params"] = {**GEN["backbone"]["params"], "in_channels": 9, "sample_size": 8}
STAGE = {"steps": 4, "batch_size": 4, "lr": 0.01, "checkpoint_every": 0, "progress": False, "seed": 3,
         "cond_dropout": 0.25, "warmup_steps": 0}
BASE = {**STAGE, "select": {"split": ["train"]}}
STAGE1 = {**STAGE, "select": {"split": ["train"], "modality": ["CT"]},
          "ewc": {"fisher_batches": 2, "fisher_batch_size": 4, "top_fraction": 0.2, "lambda": 10.0}}
STAGE2 = {**STAGE, "select": {"split": ["train"], "modality": ["MR"]}, "severity_prompt": True, "method": "lora",
          "objective": "tweedie", "lora": {"rank": 2, "alpha": 2.0},
          "consistency": {"temporal_weight": 0.1, "spatial_weight": 0.1}}
VARIANTS = {"victr": {}, "vanilla": {"method": "full", "objective": "flow",
                                     "consistency": {"temporal_weight": 0.0, "spatial_weight": 0.0}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shards, text_encoder):
    """VAE -> base -> stage 1 -> stage 2 (victr, vanilla), a few steps each."""
    root = tmp_path_factory.mktemp("run")
    vae_cfg = {"model": dict(TINY_VAE_CONFIGS["2d"]), "steps": 3, "batch_size": 4, "lr": 1e-4, "checkpoint_every": 0,
               "progress": False, "seed": 1, "stats_batch_size": 8}
    vae_summary = run_vae(shards, root / "vae", vae_cfg)
    vae, stats = root / "vae" / "final", root / "vae" / "latent_stats.json"
    run_base(shards, vae, stats, root / "base", GEN, BASE, text_encoder=text_encoder)
    run_stage1(shards, vae, stats, root / "base" / "final", root / "stage1", GEN, STAGE1, BASE,
               text_encoder=text_encoder)
    models = {}
    for variant in VARIANTS:
        cfg = variant_config(STAGE2, VARIANTS, variant)
        _, models[variant] = run_stage2(shards, vae, stats, root / "stage1" / "final", root / "stage1" / "ewc.safetensors",
                                        root / "stage2" / variant, GEN, cfg, text_encoder=text_encoder)
    return root, vae_summary, models


def test_severity_grades_thresholds():
    grades = severity_grades(np.array([0.0, 0.049, 0.05, 0.1, 0.149, 0.15, 0.9]), [0.05, 0.15])
    assert grades.tolist() == [0, 0, 1, 1, 1, 2, 2]
    masks = np.full((2, 2, 4, 4), -0.5, np.float32)
    masks[0, 0, :1] = 0.5  # 4 of 16 pixels
    np.testing.assert_allclose(severity_fractions(masks, ["liver", "bone"], "liver"), [0.25, 0.0])
    with pytest.raises(ValueError):
        severity_grades(np.zeros(2), [0.2, 0.1])
    with pytest.raises(KeyError):
        severity_fractions(masks, ["liver", "bone"], "spleen")


def test_prompts_name_modality_organs_severity_and_region(shards):
    index, images, masks, names = load_slices(shards)
    assert names == NAMES and images.shape == (24, 1, 32, 32) and masks.shape == (24, 5, 32, 32)
    prompts = slice_prompts(index.iloc[:2], np.array([0, 2]), "liver involvement")
    assert prompts[0].startswith("MR; segmentation of ") and "; low liver involvement; upper abdomen" in prompts[0]
    assert prompts[1].startswith("CT; ") and prompts[1].endswith("severe liver involvement; upper abdomen, portal venous phase")


def test_latent_dataset_shapes_and_prompt_cache(trained, shards, text_encoder):
    root = trained[0]
    from medsynth.vae import load_autoencoder, load_latent_statistics

    data = build_latent_data(shards, load_autoencoder(root / "vae" / "final"),
                             load_latent_statistics(root / "vae" / "latent_stats.json"), text_encoder,
                             {"split": ["train"], "modality": ["MR"]}, GEN["severity"], max_length=16)
    n = len(data.index)
    assert n == 12 and set(data.index["modality"]) == {"MR"} and set(data.index["split"]) == {"train"}
    t = data.dataset.tensors
    assert t["latent"].shape == (n, 4, 8, 8) and t["mask"].shape == (n, 5, 8, 8) and t["prompt"].shape == (n,)
    assert float(t["mask"].min()) >= -0.5 and float(t["mask"].max()) <= 0.5
    assert data.tokens.shape == (len(data.prompts) + 1, 16, 384) and data.keep[-1].sum() == 2  # "" = [CLS][SEP]
    assert len(set(data.prompts)) == len(data.prompts) and {data.prompts[i] for i in t["prompt"].tolist()} == set(data.index["prompt"])
    grades = severity_grades(data.index["severity_fraction"], GEN["severity"]["thresholds"])
    assert [["low", "mild", "severe"][g] for g in grades] == data.index["severity"].tolist()


def test_latents_streamed_shard_by_shard_equal_those_of_all_slices_at_once(trained, shards, text_encoder, tmp_path):
    """The training set split over three shards (with a select that empties one) is read one shard at a time,
    and the latents, masks, grades and prompts are those of encoding the same slices read at once: the
    encoder's batches cross the shard boundaries (batch size 5 divides no shard)."""
    from medsynth.io.trainsets import load_shard, write_shard
    from medsynth.vae import load_autoencoder, load_latent_statistics

    root = trained[0]
    vae, stats = load_autoencoder(root / "vae" / "final"), load_latent_statistics(root / "vae" / "latent_stats.json")
    index = pd.read_csv(shards[1], keep_default_na=False)
    data = load_shard(shards[0])
    split = []
    for k, rows in enumerate((range(0, 7), range(7, 9), range(9, 24))):
        part = index.iloc[list(rows)]
        samples = [({c: r[c] for c in index.columns if c != "sample"}, data["image"][r["sample"]],
                    data["masks"][r["sample"]] + 0.5) for _, r in part.iterrows()]
        if k == 1:  # a shard the select below empties: only MR slices
            samples = [s for s in samples if s[0]["modality"] == "MR"]
        write_shard(samples, NAMES, tmp_path / f"shard-{k:03d}.safetensors", tmp_path / f"shard-{k:03d}.csv")
        split += [str(tmp_path / f"shard-{k:03d}.safetensors"), str(tmp_path / f"shard-{k:03d}.csv")]
    select = {"split": ["train"], "modality": ["CT"]}
    streamed = build_latent_data(split, vae, stats, text_encoder, select, GEN["severity"], max_length=16, batch_size=5)
    at_once = build_latent_data(split, vae, stats, text_encoder, select, GEN["severity"], max_length=16, batch_size=5,
                                slices=load_slices(split))
    # 8 CT training slices, one of them in the shard that keeps MR only
    assert len(streamed.index) == 7 == len(load_slices(split, select)[0]) and set(streamed.index["modality"]) == {"CT"}
    for key in ("latent", "mask", "prompt"):
        assert torch.equal(streamed.dataset.tensors[key], at_once.dataset.tensors[key]), key
    assert streamed.index.drop(columns="shard").equals(at_once.index.drop(columns="shard"))
    assert streamed.prompts == at_once.prompts


def test_vae_outputs(trained):
    root, summary, _ = trained
    assert (root / "vae" / "final" / "config.json").exists() and summary["steps"] == 3
    stats = json.loads((root / "vae" / "latent_stats.json").read_text())
    assert len(stats["mean"]) == 4 and stats["count"] == 20 * 8 * 8  # image latents of the 20 train slices
    table = pd.read_csv(root / "vae" / "reconstruction.csv")
    assert table["target"].tolist() == ["image", *NAMES]
    assert table.loc[0, "n"] == 4 and np.isfinite(table.loc[0, "ssim"]) and table.loc[0, "psnr"] > 0
    assert table.set_index("target").loc["spleen", "status"] == "empty"


def test_stage1_trains_only_the_selected_layers(trained):
    root = trained[0]
    base = load_file(str(root / "base" / "final" / "diffusion_pytorch_model.safetensors"))
    stage1 = load_file(str(root / "stage1" / "final" / "diffusion_pytorch_model.safetensors"))
    selection = json.loads((root / "stage1" / "selected_layers.json").read_text())
    trainable = set(selection["trainable_parameters"])
    assert 0 < len(trainable) < len(base)
    for name, value in base.items():
        if name in trainable:
            continue
        assert torch.equal(value, stage1[name]), name
    assert any(not torch.equal(base[n], stage1[n]) for n in trainable)
    curve = pd.read_csv(root / "stage1" / "loss_curve.csv")
    assert {"flow", "ewc", "loss"} <= set(curve.columns) and len(curve) == 4
    assert (root / "stage1" / "train_config.json").exists()


def test_stage2_victr_changes_only_lora_and_vanilla_changes_weights(trained):
    root, _, models = trained
    stage1 = load_file(str(root / "stage1" / "final" / "diffusion_pytorch_model.safetensors"))
    victr = {n.replace(".base_layer", ""): p.detach() for n, p in models["victr"].named_parameters() if "lora_" not in n}
    assert set(victr) == set(stage1)
    for name, value in stage1.items():
        assert torch.equal(value, victr[name]), name  # the stage-1 weights are bit-identical
    adapter = load_file(str(root / "stage2" / "victr" / "final" / "adapter_model.safetensors"))
    assert adapter and any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k)
    targets = json.loads((root / "stage2" / "victr" / "final" / "adapter_config.json").read_text())["target_modules"]
    selected = json.loads((root / "stage1" / "selected_layers.json").read_text())["selected"]
    assert targets and all(any(t == s or t.startswith(s + ".") for s in selected) for t in targets)
    curve = pd.read_csv(root / "stage2" / "victr" / "loss_curve.csv")
    assert {"flow", "temporal", "spatial"} <= set(curve.columns)

    vanilla = load_file(str(root / "stage2" / "vanilla" / "final" / "diffusion_pytorch_model.safetensors"))
    changed = [n for n in stage1 if not torch.equal(stage1[n], vanilla[n])]
    assert len(changed) > len(stage1) // 2
    assert "temporal" not in pd.read_csv(root / "stage2" / "vanilla" / "loss_curve.csv").columns
    prompts = pd.read_csv(root / "stage2" / "vanilla" / "prompts.csv")["prompt"]
    assert prompts.str.startswith("MR; ").all() and prompts.str.contains("liver involvement").all()


def test_variant_config_merges_nested_keys():
    cfg = variant_config(STAGE2, VARIANTS, "vanilla")
    assert cfg["method"] == "full" and cfg["consistency"] == {"temporal_weight": 0.0, "spatial_weight": 0.0}
    assert cfg["lora"] == STAGE2["lora"] and variant_config(STAGE2, VARIANTS, "victr") == STAGE2
    with pytest.raises(KeyError):
        variant_config(STAGE2, VARIANTS, "reflow")


# ------------------------------------------------------------------------------------------------ sampling
SAMPLING = {"guidance_scale": 2.0, "seed": 5, "batch_size": 4, "dopri5": {"rtol": 1e-2, "atol": 1e-2, "max_num_steps": 1000}}


def test_sampling_settings_take_the_schema_defaults():
    """A spec of a partial section (the reflow one) and a condition set's inpaint options are completed
    with the schema's `sampling` defaults; the code has none of its own."""
    from medsynth.generator.integrate import SamplingSpec
    from medsynth.generator.sampling import condition_set
    from medsynth.settings import section

    defaults = section("sampling")
    spec = SamplingSpec.from_config({"run": "euler-20", "guidance_scale": 1.5, "seed": 7}, "euler-20")
    assert (spec.guidance_scale, spec.seed, spec.batch_size, spec.shift) == (1.5, 7, defaults["batch_size"], defaults["shift"])
    assert spec.max_num_steps == defaults["dopri5"]["max_num_steps"] and spec.ddpm == defaults["ddpm"]
    assert condition_set({"split": ["train"], "inpaint": {"channels": ["liver"]}})["inpaint"] == {
        "channels": ["liver"], "dilate": 1, "schedule": "shrink", "max_dilate": 2, "renoise": False}
    assert "inpaint" not in condition_set({"split": ["test"]})


def test_parse_run():
    from medsynth.generator.integrate import parse_run

    assert parse_run("euler-30") == ("euler", 30) and parse_run("dopri5-auto") == ("dopri5", None)
    for bad in ("euler", "euler-0", "rk4-10", "heun-auto"):
        with pytest.raises(ValueError):
            parse_run(bad)


def test_merged_lora_generator_predicts_like_the_trained_adapter(trained, shards, text_encoder):
    from medsynth.generator.integrate import load_trained_generator
    from medsynth.models.backbones import predict

    root, _, models = trained
    merged = load_trained_generator(GEN, root / "stage2" / "victr" / "final", root / "stage1" / "final")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.full((2, 5, 8, 8), -0.5)
    tokens, keep = text_encoder.encode(["CT; segmentation of liver", ""], 16)
    with torch.no_grad():
        a = predict(models["victr"].eval(), x, 0.5, tokens, keep, mask=mask)
        b = predict(merged, x, 0.5, tokens, keep, mask=mask)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("run, nfe", [("euler-3", 3), ("heun-2", 4), ("tweedie-1", 1), ("dopri5-auto", None)])
def test_sample_condition_set_writes_images_masks_and_cost(trained, shards, text_encoder, tmp_path, run, nfe):
    from medsynth.io.generated import load_generated
    from medsynth.generator.sampling import sample_condition_set

    root, _, _ = trained
    select = {"split": ["test"]}
    out = [tmp_path / f"s.{ext}" for ext in ("safetensors", "csv", "json")]
    generated = sample_condition_set(shards, root / "vae" / "final", root / "vae" / "latent_stats.json",
                                     root / "stage2" / "victr" / "final", root / "stage1" / "final", *out, GEN,
                                     variant_config(STAGE2, VARIANTS, "victr"), SAMPLING, run, select,
                                     text_encoder=text_encoder)
    images, masks, names = load_generated(out[0])
    index, _, real_masks, _ = load_slices(shards)
    rows = index["split"] == "test"
    assert images.shape == (int(rows.sum()), 1, 32, 32) and np.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1 and names == NAMES
    assert np.array_equal(masks, (real_masks[rows.to_numpy()] > 0).astype(np.uint8))
    summary = json.loads(out[2].read_text())
    assert summary["network_evals"] == 2 * summary["nfe"]  # guidance: conditional + null pass per evaluation
    assert summary["nfe"] == nfe if nfe else summary["nfe"] > 0
    sampled = pd.read_csv(out[1])
    assert len(sampled) == len(images) and sampled["prompt"].str.contains("liver involvement").any()
    assert np.array_equal(generated.images, images)


def test_sampling_is_reproducible_and_rejects_diffusion_samplers_on_flow_models(trained, shards, text_encoder, tmp_path):
    from medsynth.generator.sampling import sample_condition_set

    root, _, _ = trained
    args = (shards, root / "vae" / "final", root / "vae" / "latent_stats.json", root / "stage2" / "vanilla" / "final",
            None)
    runs = []
    for i in range(2):
        out = [tmp_path / f"{i}.{ext}" for ext in ("safetensors", "csv", "json")]
        runs.append(sample_condition_set(*args, *out, GEN, variant_config(STAGE2, VARIANTS, "vanilla"), SAMPLING,
                                         "euler-2", {"split": ["test"]}, text_encoder=text_encoder).images)
    assert np.array_equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="noise-prediction"):
        sample_condition_set(*args, *[tmp_path / f"d.{e}" for e in ("safetensors", "csv", "json")], GEN,
                             variant_config(STAGE2, VARIANTS, "vanilla"), SAMPLING, "ddim-5", {"split": ["test"]},
                             text_encoder=text_encoder)


def test_preempted_sampling_keeps_finished_batches_and_the_rerun_completes_them(trained, shards, text_encoder,
                                                                                tmp_path, monkeypatch):
    """SIGUSR1 after the first batch: exit 75, that batch kept; the rerun samples only the rest and writes
    the same set as an uninterrupted run; the kept batches are removed once the set is written."""
    import os
    import signal

    from medsynth.sample.batches import BatchStore

    root, _, _ = trained
    args = (shards, root / "vae" / "final", root / "vae" / "latent_stats.json", root / "stage2" / "vanilla" / "final",
            None)
    cfg = {**SAMPLING, "batch_size": 2, "hu_qc": {"enabled": False}}
    model_cfg = variant_config(STAGE2, VARIANTS, "vanilla")

    def run(name):
        out = [tmp_path / f"{name}.{ext}" for ext in ("safetensors", "csv", "json")]
        return out, sample_condition_set(*args, *out, GEN, model_cfg, cfg, "euler-2", {"split": ["test"]},
                                         text_encoder=text_encoder)

    from medsynth.io.generated import load_generated
    from medsynth.generator.sampling import sample_condition_set

    ref_out, _ = run("ref")
    assert not Path(str(ref_out[0]) + ".batches").exists()  # removed once the set is written
    saved = BatchStore.save
    calls = {"saved": 0}

    def save_then_signal(self, start, x0, nfe, seconds):
        saved(self, start, x0, nfe, seconds)
        calls["saved"] += 1
        if calls["saved"] == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(BatchStore, "save", save_then_signal)
    with pytest.raises(SystemExit) as stopped:
        run("run")
    assert stopped.value.code == 75 and calls["saved"] == 1
    kept = Path(str(tmp_path / "run.safetensors") + ".batches")
    assert sorted(p.name for p in kept.glob("batch_*")) == ["batch_00000000.safetensors"]
    assert not (tmp_path / "run.safetensors").exists()

    loaded = []
    original_load = BatchStore.load
    monkeypatch.setattr(BatchStore, "load", lambda self, start: loaded.append(r := original_load(self, start)) or r)
    out, _ = run("run")
    assert sum(r is not None for r in loaded) == 1 and len(loaded) > 1  # only the first batch came from disk
    assert np.array_equal(load_generated(out[0])[0], load_generated(ref_out[0])[0])
    assert not kept.exists()


# ------------------------------------------------------------------------------------------------ ablation variants
ABLATIONS = {
    "no_stage1": {"init": "base"},
    "reflow": {"objective": "flow", "reflow": {"enabled": True, "run": "euler-2", "guidance_scale": 1.0, "seed": 1}},
    "ddpm": {"method": "full", "objective": "ddpm", "consistency": {"temporal_weight": 0.0, "spatial_weight": 0.0}},
    "contrastive": {"contrastive": {"enabled": True, "roi": "liver"}},
    "adversarial": {"adversarial": {"enabled": True, "weight": 0.1, "channels": 8, "layers": 1}},
    "fsf": {"objective": "flow", "cond_dropout": 0.0, "consistency": {"temporal_weight": 0.0, "spatial_weight": 0.0},
            "reflow": {"enabled": True, "distill": True, "run": "euler-2", "guidance_scale": 1.0, "seed": 1}},
    "dmd": {"objective": "flow", "cond_dropout": 0.0, "consistency": {"temporal_weight": 0.0, "spatial_weight": 0.0},
            "dmd": {"enabled": True, "guidance_scale": 2.0, "pairs": {"run": "euler-2", "guidance_scale": 2.0, "seed": 1}}},
}
DDPM = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195}


@pytest.mark.parametrize("variant", list(ABLATIONS))
def test_ablation_variants_train_through_stage2(trained, shards, text_encoder, tmp_path, variant):
    root, _, _ = trained
    cfg = variant_config(STAGE2, ABLATIONS, variant)
    init = root / ("base" if cfg.get("init") == "base" else "stage1") / "final"
    result, model = run_stage2(shards, root / "vae" / "final", root / "vae" / "latent_stats.json", init,
                               root / "stage1" / "ewc.safetensors", tmp_path / variant, GEN, cfg,
                               text_encoder=text_encoder, ddpm_cfg=DDPM)
    assert result.status == "completed" and result.step == STAGE2["steps"]
    curve = pd.read_csv(tmp_path / variant / "loss_curve.csv")
    assert np.isfinite(curve["loss"]).all()
    meta = json.loads((Path(result.final_dir) / "medsynth_stage2.json").read_text())
    assert meta["init"] == str(init) and meta["objective"] == cfg["objective"]
    if variant == "ddpm":
        assert "ddpm" in curve and "flow" not in curve
    if variant == "contrastive":
        assert {"contrastive", "contrastive_weight"} <= set(curve.columns)
        assert np.allclose(curve["contrastive_weight"], [0.01, 0.01, 0.001, 0.001])  # 50 % of the steps at each
    if variant == "adversarial":  # both players learn; only the LoRA generator is saved
        assert {"adversarial", "discriminator"} <= set(curve.columns) and np.isfinite(curve["discriminator"]).all()
        assert (Path(result.final_dir) / "adapter_model.safetensors").exists()
        assert sorted(load_file(str(Path(result.final_dir) / "adapter_model.safetensors"))) == sorted(
            k for k in load_file(str(root / "stage2" / "victr" / "final" / "adapter_model.safetensors")))
    if variant in ("fsf", "dmd"):
        assert meta["one_step"]
        # the student is a LoRA adapter on stage 1 (DMD's fake-score model is not saved with it)
        assert sorted(p.name for p in Path(result.final_dir).iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors", "medsynth_stage2.json"]
    if variant == "dmd":
        assert {"dm", "regression", "fake_flow", "dm_gap"} <= set(curve.columns)


def test_reflow_pairs_replace_latents_with_the_models_own_samples(trained, shards, text_encoder):
    from medsynth.generator.integrate import SamplingSpec, integrate_latents, load_trained_generator
    from medsynth.generator.loaders import load_latent_data
    from medsynth.generator.stages import reflow_pairs

    root, _, _ = trained
    model = load_trained_generator(GEN, root / "stage1" / "final")
    data = load_latent_data(shards, root / "vae" / "final", root / "vae" / "latent_stats.json", GEN, STAGE2, text_encoder)
    real = data.dataset.tensors["latent"].clone()
    cfg = {"run": "euler-2", "guidance_scale": 1.0, "seed": 4}
    reflow_pairs(model, data, cfg, "flow")
    x0, noise, nfe, _ = integrate_latents(model, "flow", data, SamplingSpec.from_config(cfg, "euler-2"))
    assert torch.equal(data.dataset.tensors["latent"], x0) and torch.equal(data.dataset.tensors["noise"], noise)
    assert not torch.equal(real, x0) and nfe == 2


def test_ddpm_sampler_runs_on_a_noise_prediction_model(trained, shards, text_encoder, tmp_path):
    from medsynth.generator.sampling import sample_condition_set

    root, _, _ = trained
    cfg = variant_config(STAGE2, ABLATIONS, "ddpm")
    result, _ = run_stage2(shards, root / "vae" / "final", root / "vae" / "latent_stats.json", root / "stage1" / "final",
                           root / "stage1" / "ewc.safetensors", tmp_path / "ddpm", GEN, cfg, text_encoder=text_encoder,
                           ddpm_cfg=DDPM)
    out = [tmp_path / f"s.{ext}" for ext in ("safetensors", "csv", "json")]
    generated = sample_condition_set(shards, root / "vae" / "final", root / "vae" / "latent_stats.json",
                                     result.final_dir, None, *out, GEN, cfg, {**SAMPLING, "ddpm": DDPM}, "ddim-3",
                                     {"split": ["test"]}, text_encoder=text_encoder)
    assert np.isfinite(generated.images).all() and json.loads(out[2].read_text())["nfe"] == 3
    with pytest.raises(ValueError, match="ddpm or ddim"):
        sample_condition_set(shards, root / "vae" / "final", root / "vae" / "latent_stats.json", result.final_dir,
                             None, *out, GEN, cfg, SAMPLING, "euler-3", {"split": ["test"]}, text_encoder=text_encoder)


def test_hu_quality_check_resamples_failures_and_records_pass_rates(trained, shards, text_encoder, tmp_path):
    from medsynth.generator.sampling import sample_condition_set

    root, _, _ = trained
    qc = {"enabled": True, "reference": {"split": ["train"], "modality": ["CT"]}, "method": "sigma", "k": 0.5,
          "max_tries": 3}
    summaries = {}
    for tries in (1, 3):
        out = [tmp_path / f"{tries}.{ext}" for ext in ("safetensors", "csv", "json")]
        sample_condition_set(shards, root / "vae" / "final", root / "vae" / "latent_stats.json",
                             root / "stage2" / "vanilla" / "final", None, *out, GEN,
                             variant_config(STAGE2, VARIANTS, "vanilla"),
                             {**SAMPLING, "hu_qc": {**qc, "max_tries": tries}}, "euler-2", {"split": ["test"]},
                             text_encoder=text_encoder)
        summaries[tries] = json.loads(out[2].read_text())["hu_qc"]
        index = pd.read_csv(out[1])  # each slice's check, for the metrics' intervals (not in the summary)
        assert "per_sample" not in summaries[tries]
        assert index["hu_qc_pass"].mean() == pytest.approx(summaries[tries]["pass_rate"])
        assert index["hu_qc_first_pass"].mean() == pytest.approx(summaries[tries]["first_pass_rate"])
        assert index["hu_qc_real_pass"].mean() == pytest.approx(summaries[tries]["real_pass_rate"])
        assert index["hu_qc_tries"].between(1, tries).all()
    one, three = summaries[1], summaries[3]
    assert one["enabled"] and set(one["bounds"]) <= set(NAMES) and one["bounds"]
    assert one["pass_rate"] == one["first_pass_rate"] and one["mean_tries"] == 1.0  # check only
    assert three["first_pass_rate"] == one["first_pass_rate"]  # same noise, same first attempt
    assert three["pass_rate"] >= three["first_pass_rate"] and 1.0 <= three["mean_tries"] <= 3.0
    assert three["regenerated"] == round((1 - three["first_pass_rate"]) * three["n"])
    assert 0.0 <= three["real_pass_rate"] <= 1.0


def test_stochastic_mask_conditions_relabel_prompts_and_masks(trained, shards, text_encoder, tmp_path):
    from medsynth.io.generated import load_generated
    from medsynth.generator.sampling import sample_condition_set

    root, _, _ = trained
    select = {"split": ["train"], "modality": ["CT"], "stochastic_masks": {"seed": 3, "p_perturb": 1.0}}
    out = [tmp_path / f"s.{ext}" for ext in ("safetensors", "csv", "json")]
    sample_condition_set(shards, root / "vae" / "final", root / "vae" / "latent_stats.json",
                         root / "stage2" / "vanilla" / "final", None, *out, GEN,
                         variant_config(STAGE2, VARIANTS, "vanilla"), SAMPLING, "euler-2", select,
                         text_encoder=text_encoder)
    images, masks, _ = load_generated(out[0])
    index, _, real, _ = load_slices(shards)
    rows = ((index["split"] == "train") & (index["modality"] == "CT")).to_numpy()
    assert images.shape[0] == rows.sum() and masks.shape == real[rows].shape
    assert not np.array_equal(masks, (real[rows] > 0).astype(np.uint8))  # new masks, not the real ones
    sampled = pd.read_csv(out[1])
    for organs, mask in zip(sampled["organs"], masks):  # the prompt names what the new mask holds
        assert json.loads(organs) == [n for c, n in enumerate(NAMES) if mask[c].any()]
    assert sampled["prompt"].str.contains("liver involvement").all()


def test_fsf_distillation_trains_only_at_the_noise_end():
    from medsynth.generator.step import GeneratorStep

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, t, *args, **kwargs):
            seen.append(t.clone())
            return torch.zeros_like(x[:, :4])

    step = GeneratorStep(torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool), 1, distribution="one_step")
    batch = {"latent": torch.randn(5, 4, 8, 8), "noise": torch.randn(5, 4, 8, 8), "mask": torch.zeros(5, 5, 8, 8),
             "prompt": torch.zeros(5, dtype=torch.long)}
    from unittest import mock

    with mock.patch("medsynth.generator.objective.predict", lambda m, x, t, *a, **k: m(x, t)):
        terms = step(Probe(), batch, 0, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0], torch.ones(5))
    # v = 0 at t = 1: the loss is the full coupling velocity noise - latent
    assert torch.isclose(terms["flow"], (batch["noise"] - batch["latent"]).pow(2).mean())


def test_guiding_mask_keeps_the_real_latent_outside_the_roi(trained, shards, text_encoder, tmp_path):
    from dataclasses import replace

    from medsynth.generator.integrate import SamplingSpec, inpaint_keep_mask, integrate_latents, load_trained_generator
    from medsynth.generator.sampling import sample_condition_set
    from medsynth.generator.loaders import load_latent_data

    root, _, _ = trained
    model = load_trained_generator(GEN, root / "stage1" / "final")
    data = load_latent_data(shards, root / "vae" / "final", root / "vae" / "latent_stats.json", GEN, STAGE2, text_encoder)
    inpaint = {"channels": ["liver"], "dilate": 0, "schedule": "shrink", "max_dilate": 2, "renoise": False}
    spec = replace(SamplingSpec.from_config({"seed": 2, "guidance_scale": 1.0}, "euler-3"), inpaint=inpaint)
    keep = inpaint_keep_mask(data.dataset.tensors["mask"], data.names, ["liver"], 0)
    assert 0 < float(keep.mean()) < 1  # some latent pixels are liver, some are not
    x0, _, nfe, _ = integrate_latents(model, "flow", data, spec)
    real = data.dataset.tensors["latent"]
    outside = keep.expand_as(real) > 0.5
    assert nfe == 3 and torch.allclose(x0[outside], real[outside], atol=1e-6)
    assert not torch.allclose(x0[~outside], real[~outside], atol=1e-3)
    with pytest.raises(ValueError, match="euler"):
        integrate_latents(model, "flow", data, replace(spec, sampler="heun", steps=2))
    with pytest.raises(KeyError, match="not condition channels"):
        inpaint_keep_mask(data.dataset.tensors["mask"], data.names, ["tumour"], 0)
    # through the rule's entry point: a condition set with `inpaint`
    args = (shards, root / "vae" / "final", root / "vae" / "latent_stats.json", root / "stage1" / "final", None)
    outs = [tmp_path / f"gm.{e}" for e in ("safetensors", "csv", "json")]
    generated = sample_condition_set(*args, *outs, GEN, STAGE2, {"seed": 2, "guidance_scale": 1.0}, "euler-2",
                                     {"split": ["train"], "modality": ["MR"], "inpaint": {"channels": ["liver"]}},
                                     text_encoder=text_encoder)
    # the condition set's inpaint options with the schema's defaults filled in
    assert json.loads(outs[2].read_text())["spec"]["inpaint"] == {"channels": ["liver"], "dilate": 1,
                                                                   "schedule": "shrink", "max_dilate": 2,
                                                                   "renoise": False}
    assert generated.nfe == 2 and np.isfinite(generated.images).all()


def test_adversarial_terms_reach_only_their_player():
    from medsynth.generator.players import AdversarialPair, build_discriminator

    torch.manual_seed(0)
    gen_param = torch.nn.Parameter(torch.ones(1))
    pair = AdversarialPair(torch.nn.Linear(1, 1), build_discriminator({"channels": 4, "layers": 1, "norm": "INSTANCE"}, 3, 2))
    real, mask = torch.randn(2, 2, 8, 8), torch.zeros(2, 1, 8, 8)
    fake = torch.randn(2, 2, 8, 8) * gen_param
    terms = pair.adversarial_terms(real, fake, mask)
    terms["adversarial"].backward(retain_graph=True)
    assert gen_param.grad is not None and float(gen_param.grad.abs()) > 0
    assert all(p.grad is None for p in pair.discriminator.parameters())
    gen_param.grad = None
    terms["discriminator"].backward()
    assert gen_param.grad is None
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in pair.discriminator.parameters())
