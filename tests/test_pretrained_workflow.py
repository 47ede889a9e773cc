"""The embedded study with its backbone switched to a pretrained checkpoint folder, through snakemake.

A tiny Stable Diffusion 1.5 folder with the real repository layout (:mod:`tiny_pipelines`) stands where a
study would name the registry's ``sd15``: the generator's backbone is its UNet (widened for the five
mask channels) and its text encoder the folder's CLIP; the VAE stays the study's own. ``snakemake
--cores 2`` on the embedded config, training stages cut to a few steps, builds stage 2, the sampling
run and its metrics from it; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiny_pipelines import make_tiny_sd15
from workflow import micro_generative_config, run_snakemake


@pytest.mark.slow
def test_embedded_study_runs_stage2_sampling_and_metrics_from_a_pretrained_backbone(tmp_path, monkeypatch):
    repo = tmp_path / "stable-diffusion-v1-5"
    repo.mkdir()
    make_tiny_sd15(repo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the rules read local files only
    config = micro_generative_config()
    # Stable Diffusion's UNet takes 4 latent channels: a VAE without the embedded study's latent folding
    config["vae"]["model"] = {**config["vae"]["model"], "block_out_channels": [16, 32, 32], "latent_pack": 1}
    config["generator"] = {**config["generator"],
                           "backbone": {"type": "unet2d_condition", "pretrained": str(repo),
                                        "params": {"in_channels": 4 + len(config["masks"]["conditions"])}},
                           "text_encoder": {"type": "clip", "pretrained": str(repo), "padding": "pipeline"}}
    results = f"{config['results_dir']}/example"
    metrics = f"{results}/metrics/victr/euler-3.json"
    calibration = f"{results}/metrics/calibration.json"
    run_snakemake(tmp_path / "work", config, metrics, calibration)
    record = json.loads((tmp_path / "work" / metrics).read_text())
    assert np.isfinite(record["fd_self"]["value"]) and record["n_generated"] == record["n_real"] > 0
    assert record["fid"]["status"].startswith("unavailable")  # no Inception weights here, and none stands in
    fd = record["estimates"]["fd_self"]  # the bootstrap interval of every metric (one test patient: slice blocks)
    assert fd["value"] == pytest.approx(record["fd_self"]["value"], rel=1e-6) and fd["low"] <= fd["high"]
    boot = record["bootstrap"]
    assert boot["unit"].startswith("blocks of 8 consecutive slices") and boot["n_units"] >= 2
    assert len(boot["replicates"]["fd_self"]) == boot["resamples"] == 1000
    assert record["estimates"]["ssim"]["value"] == pytest.approx(record["pairs"]["ssim"])
    assert record["estimates"]["dice"]["value"] == pytest.approx(record["mask_fidelity"]["mean_generated_vs_gt"]["dice"])
    downstream = json.loads((tmp_path / "work" / results / "downstream" / "real" / "evaluation.json").read_text())
    assert downstream["estimates"]["mdsc"]["value"] == pytest.approx(downstream["mdsc"])
    assert downstream["bootstrap"]["units_digest"] == boot["units_digest"]  # the same test slices: paired
    # the calibration rows, made with the same extractor on the same held-out slices
    cal = json.loads((tmp_path / "work" / calibration).read_text())
    rows = {r["name"]: r for r in cal["rows"]}
    assert {"real", "real: training slices", "VAE reconstruction", "blur_3px", "uniform_noise",
            "real, shuffled masks"} <= set(rows)
    assert rows["uniform_noise"]["fd_self"] > rows["blur_3px"]["fd_self"] > 0  # noise is far from real slices
    assert cal["bootstrap"]["units_digest"] == boot["units_digest"]  # paired with the models' records
    low, high = rows["VAE reconstruction"]["fd_self_interval"]
    assert low <= rows["VAE reconstruction"]["fd_self"] <= high
    base = json.loads((tmp_path / "work" / results / "base" / "final" / "config.json").read_text())
    assert base["in_channels"] == 9 and base["cross_attention_dim"] == 32  # the tiny SD UNet, widened
    assert list((tmp_path / "work" / results / "stage2" / "victr" / "final").rglob("adapter_model.safetensors"))
