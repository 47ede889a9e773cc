"""SDEdit counterfactuals (ViCTr Fig. 3 / 8) and progressive conditions (MedSyn2 Fig. 5): the tensor core on
analytic fields, the condition-set options through ``sample_condition_set`` on a tiny trained generator
(tiny VAE + a few base steps, as tests/test_generator.py), the figures, and the figure rules' DAG."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ct_slice_shard
from tiny_backbones import TINY_CONFIGS

NAMES = ["liver", "lungs", "bone", "kidneys", "spleen"]
GEN = {"backbone": copy.deepcopy({**TINY_CONFIGS["unet2d_condition"]}), "text_encoder": {"type": "minilm"},
       "max_length": 16, "threads": 1,
       "severity": {"organ": "liver", "thresholds": [0.05, 0.15], "pathology": "liver involvement"}}
GEN["backbone"]["params"] = {**GEN["backbone"]["params"], "in_channels": 9, "sample_size": 8}
BASE = {"steps": 3, "batch_size": 4, "lr": 0.01, "checkpoint_every": 0, "progress": False, "seed": 3,
        "cond_dropout": 0.25, "warmup_steps": 0, "select": {"split": ["train"]}, "severity_prompt": True}
SAMPLING = {"guidance_scale": 2.0, "seed": 5, "batch_size": 4}


def _model(**changes) -> dict:
    """The base section the tiny model was trained with, complete (as the workflow hands it to sampling)."""
    from medsynth.settings import section

    return section("base", {**BASE, **changes})

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the tensor core ------------------------------------------------------------------------------
def _linear_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.3 * x - 0.1 * t.reshape(-1, 1, 1, 1) + 0.05


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_strength_one_is_plain_euler_and_strength_zero_the_input(shift):
    from medsynth.sample import euler
    from medsynth.sample.edit import sdedit_euler

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    full, nfe = sdedit_euler(_linear_field, x0, noise, 1.0, 7, shift)
    assert nfe == 7 and torch.equal(full, euler(_linear_field, noise, 7, shift))
    same, nfe = sdedit_euler(_linear_field, x0, noise, 0.0, 7, shift)
    assert nfe == 0 and torch.equal(same, x0)


def test_edit_times_truncate_the_euler_grid_and_reach_the_target_of_a_straight_field():
    from medsynth.sample.edit import edit_times, renoise, sdedit_euler

    assert edit_times(4, 1.0, 0.5) == [0.5, 0.25, 0.0]
    assert edit_times(4, 1.0, 0.6) == [0.6, 0.5, 0.25, 0.0]
    assert edit_times(4, 1.0, 1.0) == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="strength"):
        edit_times(4, 1.0, 1.5)
    gen = torch.Generator().manual_seed(1)
    x0, noise, target = (torch.randn(2, 1, 3, 3, generator=gen) for _ in range(3))
    assert torch.allclose(renoise(x0, noise, 0.25), 0.25 * noise + 0.75 * x0)

    def straight(x, t):  # the exact velocity towards the point mass `target` (x_t = t n + (1 - t) target)
        return (x - target) / t.reshape(-1, 1, 1, 1)

    for strength in (0.1, 0.5, 0.9):  # one Euler step of the exact field lands on the target from any start time
        edited, _ = sdedit_euler(straight, x0, noise, strength, 5)
        assert torch.allclose(edited, target, atol=1e-5)


def test_edited_and_stage_masks_switch_channels():
    from medsynth.generator.edits import edited_masks, stage_masks

    masks = np.zeros((3, 5, 4, 4), bool)
    masks[0, 0, :2] = True  # liver in slice 0
    masks[1, 4, :3] = True  # the largest spleen, in slice 1
    masks[2, 4, :1] = True
    new = edited_masks(masks, NAMES, add_channels=["spleen"], remove_channels=["liver"])
    assert not new[:, 0].any()
    assert np.array_equal(new[0, 4], masks[1, 4]) and np.array_equal(new[2, 4], masks[2, 4])  # own kept
    with pytest.raises(ValueError, match="no slice"):
        edited_masks(masks, NAMES, add_channels=["bone"])
    with pytest.raises(KeyError, match="not condition channels"):
        edited_masks(masks, NAMES, remove_channels=["tumour"])
    staged = stage_masks(masks, NAMES, ["spleen"])
    assert not staged[:, :4].any() and np.array_equal(staged[:, 4], masks[:, 4])


# -- a tiny trained generator ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return ct_slice_shard(tmp_path_factory.mktemp("shards"), NAMES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shards, text_encoder):
    """Tiny VAE (3 steps) and a base generator with severity prompts (3 steps)."""
    from medsynth.generator import run_base
    from medsynth.vae import TINY_VAE_CONFIGS
    from medsynth.vae.stage import run_vae

    root = tmp_path_factory.mktemp("run")
    run_vae(shards, root / "vae", {"model": dict(TINY_VAE_CONFIGS["2d"]), "steps": 3, "batch_size": 4, "lr": 1e-4,
                                   "checkpoint_every": 0, "progress": False, "seed": 1, "stats_batch_size": 8})
    run_base(shards, root / "vae" / "final", root / "vae" / "latent_stats.json", root / "base", GEN, BASE,
             text_encoder=text_encoder)
    return root


def _args(root: Path, shards):
    return shards, root / "vae" / "final", root / "vae" / "latent_stats.json", root / "base" / "final", None


def test_integrated_edit_strength_one_equals_sampling_and_zero_the_real_latents(trained, shards, text_encoder):
    from medsynth.generator.integrate import SamplingSpec, integrate_latents, load_trained_generator
    from medsynth.generator.loaders import load_latent_data

    model = load_trained_generator(GEN, trained / "base" / "final")
    data = load_latent_data(shards, trained / "vae" / "final", trained / "vae" / "latent_stats.json", GEN,
                            {**BASE, "select": {"split": ["test"]}}, text_encoder)
    spec = SamplingSpec.from_config(SAMPLING, "euler-3")
    plain, noise, _, _ = integrate_latents(model, "flow", data, spec)
    full, noise_edit, nfe, _ = integrate_latents(model, "flow", data, replace(spec, edit={"strength": 1.0}))
    assert nfe == 3 and torch.equal(noise, noise_edit) and torch.allclose(full, plain, atol=1e-6)
    kept, _, nfe, _ = integrate_latents(model, "flow", data, replace(spec, edit={"strength": 0.0}))
    assert nfe == 0 and torch.equal(kept, data.dataset.tensors["latent"])
    with pytest.raises(ValueError, match="euler"):
        integrate_latents(model, "flow", data, replace(spec, sampler="heun", steps=2, edit={"strength": 0.5}))


def test_counterfactual_set_records_source_prompts_and_strength(trained, shards, text_encoder, tmp_path):
    from medsynth.generator.sampling import sample_condition_set
    from medsynth.io.generated import load_generated

    outs = [tmp_path / f"cf.{e}" for e in ("safetensors", "csv", "json")]
    select = {"split": ["test"], "edit": {"strength": 0.5, "severity": "severe", "remove_channels": ["bone"]}}
    generated = sample_condition_set(*_args(trained, shards), *outs, GEN, _model(), SAMPLING, "euler-4", select,
                                     text_encoder=text_encoder)
    images, masks, names = load_generated(outs[0])
    index = pd.read_csv(outs[1])
    assert names == NAMES and len(index) == len(images) == 4 and np.isfinite(images).all()
    assert not masks[:, NAMES.index("bone")].any()
    assert (index["strength"] == 0.5).all() and index["prompt"].str.contains("severe liver involvement").all()
    assert list(index["source_case"]) == list(index["case_id"]) and index["source_slice"].notna().all()
    assert not index["organs"].str.contains("bone").any()
    assert index["source_prompt"].str.contains("bone").any()  # the real prompts named the bone
    assert generated.nfe == 2  # euler-4 truncated at t = 0.5: steps from 0.5 and 0.25
    summary = json.loads(outs[2].read_text())
    assert summary["spec"]["edit"] == {"strength": 0.5} and summary["hu_qc"]["enabled"] is False
    with pytest.raises(ValueError, match="euler"):
        sample_condition_set(*_args(trained, shards), *outs, GEN, _model(), SAMPLING, "heun-2", select,
                             text_encoder=text_encoder)
    with pytest.raises(ValueError, match="one of"):
        sample_condition_set(*_args(trained, shards), *outs, GEN, _model(), SAMPLING, "euler-2",
                             {**select, "inpaint": {"channels": ["liver"]}}, text_encoder=text_encoder)
    with pytest.raises(ValueError, match="severity prompts"):
        sample_condition_set(*_args(trained, shards), *outs, GEN, _model(severity_prompt=False), SAMPLING,
                             "euler-2", select, text_encoder=text_encoder)


def test_progressive_set_keeps_every_stage(trained, shards, text_encoder, tmp_path):
    from medsynth.generator.sampling import sample_condition_set
    from medsynth.io.generated import load_generated

    outs = [tmp_path / f"p.{e}" for e in ("safetensors", "csv", "json")]
    stages = [["lungs"], ["lungs", "liver"], ["lungs", "liver", "bone"]]
    generated = sample_condition_set(*_args(trained, shards), *outs, GEN, _model(), SAMPLING, "euler-4",
                                     {"split": ["test"], "progressive": {"strength": 0.5, "stages": stages}},
                                     text_encoder=text_encoder)
    images, masks, _ = load_generated(outs[0])
    index = pd.read_csv(outs[1])
    assert len(images) == len(index) == 3 * 4 and list(index["stage"]) == [1] * 4 + [2] * 4 + [3] * 4
    for k, channels in enumerate(stages):
        off = [c for c, n in enumerate(NAMES) if n not in channels]
        assert not masks[index["stage"] == k + 1][:, off].any()
    assert json.loads(index["stage_channels"].iloc[-1]) == stages[-1]
    assert generated.nfe == 4 + 2 + 2  # stage 1 from noise, two SDEdit stages from t = 0.5
    assert not np.allclose(images[:4], images[4:8])  # the second stage changed the first's images


def test_edit_figures_write_pngs(trained, shards, text_encoder, tmp_path):
    from medsynth.generator.edit_figures import counterfactual_figure, progressive_figure
    from medsynth.settings import section

    intensity = section("intensity")
    cf = {"run": "euler-2", "severities": ["low", "severe"], "strength": 0.6, "add_channels": None,
          "remove_channels": None}
    path = counterfactual_figure(*_args(trained, shards), GEN, _model(), SAMPLING, {"split": ["test"]}, cf, intensity,
                                 "soft_tissue", 2, tmp_path / "counterfactual_grid.png", text_encoder=text_encoder)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    pg = {"run": "euler-2", "stages": [["lungs"], ["lungs", "liver"]], "strength": 0.5}
    path = progressive_figure(*_args(trained, shards), GEN, _model(), SAMPLING, {"split": ["test"]}, pg, intensity,
                              "soft_tissue", 2, tmp_path / "progressive_grid.png", text_encoder=text_encoder)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_figure_rules_resolve_when_enabled(tmp_path):
    from workflow import embedded_config, run_snakemake

    config = embedded_config()
    config["figures"] = {**config["figures"],
                         "counterfactual": {"enabled": True, "model": "victr", "run": "euler-10"},
                         "progressive": {"enabled": True, "model": "victr", "run": "euler-10",
                                         "stages": [["liver"], ["liver", "spleen"]]}}
    out = run_snakemake(tmp_path, config, "report_inputs", extra=("-n",)).stdout
    for rule in ("counterfactual_grid", "progressive_grid"):  # one job each in the report's DAG
        assert re.search(rf"^{rule}\s+1$", out, re.M), out[-3000:]
    plain = run_snakemake(tmp_path / "off", embedded_config(), "report_inputs", extra=("-n",)).stdout
    assert "counterfactual_grid" not in plain and "progressive_grid" not in plain
