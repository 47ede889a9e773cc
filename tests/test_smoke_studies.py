"""The four smoke studies (config/studies/<paper>_smoke.yaml) end to end with snakemake on CPU.

Each test builds tiny checkpoints of the registry models its study names, in their real repository layouts,
serves them from loopback Hub stand-ins, and runs ``snakemake --cores 2`` to targets that cross the paper's
code paths: the weights rule fetches every model (provenance reaches the weights), then the paper's
generator (stage 2 and / or the 3D generator), a sampling run with its sampler family, its metrics and the
paper's main table. No process of the run may leave 127.0.0.1 (tests/smoke_netguard). See
tests/smoke_studies.py for the one substitution the test makes (the downstream segmenter).
"""

from __future__ import annotations

import fnmatch
import json
import math

import pandas as pd
import pytest

from smoke_studies import run_smoke_study

pytestmark = pytest.mark.slow


def _json(path):
    return json.loads(path.read_text())


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def _check_fetched(run, models: dict[str, set[str]]) -> None:
    """Each registry model came from its stand-in: exactly the repository files its registry ``include``
    matches (among them ``models[name]``), at the stand-in's commit; and no process left 127.0.0.1."""
    for name, must in models.items():
        hub, include = run.hubs[name], run.registry[name]["include"]
        files = {p for p in hub.files if any(fnmatch.fnmatch(p, pattern) for pattern in include)}
        assert must <= files < set(hub.files), name  # the repository holds files the entry does not fetch
        inventory = pd.read_csv(run.weights / name / "inventory.csv")
        assert set(inventory["path"]) == files, name
        source = _json(run.weights / name / "source.json")
        assert source["commit"] == hub.commit and source["repo_id"] == hub.repo_id
        for path in files:
            assert hub.seen_for_file(path), f"{name}: {path} was not fetched from the stand-in"
    assert run.netguard == [], "a stage tried to leave 127.0.0.1:\n" + "\n".join(run.netguard)


def _inputs(run, output: str) -> set[str]:
    return set(_json(run.results / f"{output}.prov.json")["inputs"])


def _check_record(record: dict, n_min: int = 1) -> None:
    assert _finite(record["fd_self"]["value"]), record["fd_self"]
    assert record["n_generated"] == record["n_real"] >= n_min


def test_victr_smoke_study(tmp_path):
    """ViCTr: SD 1.5 (frozen VAE, UNet widened by the seven masks, CLIP with the pipeline's padding) through
    base, stage 1 (EWC) and stage 2 (victr LoRA + Tweedie, vanilla full), Tweedie / Euler sampling, Table 2,
    Fig. 7 (downstream violins) and Fig. 3 / 8 (the cirrhosis model's counterfactuals)."""
    run = run_smoke_study("victr", tmp_path, ["tables/victr_table2.csv", "figures/downstream_violins.png",
                                              "figures/counterfactual_grid.png"])
    print(f"victr_smoke: snakemake {run.seconds:.0f} s")
    _check_fetched(run, {"sd15": {"model_index.json", "unet/diffusion_pytorch_model.safetensors",
                                  "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                  "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"},
                         "m3d_clip": {"config.json", "model.safetensors"}})
    # ViCTr Fig. 7: the violins of the per-slice Dice behind the downstream record
    per = _json(run.results / "downstream" / "real" / "evaluation.json")["per_sample"]
    assert len(per["case_id"]) == len(per["slice"]) and any(v is not None for c in per["dice"].values() for v in c)
    assert (run.results / "figures" / "downstream_violins.png").stat().st_size > 10_000
    # Fig. 3 / 8: the cirrhosis model's counterfactuals (the paper study's figure, on the smoke data)
    assert (run.results / "figures" / "counterfactual_grid.png").stat().st_size > 10_000
    assert (run.results / "stage2" / "victr_cirrmri" / "final").is_dir()
    inventory = str(run.weights / "sd15" / "inventory.csv")
    for output in ("vae/final", "base/final", "stage1/final", "stage2/victr/final", "stage2/vanilla/final"):
        assert inventory in _inputs(run, output), output
    vae = _json(run.results / "vae" / "train_config.json")
    assert vae["steps"] == 0  # the released VAE, frozen
    base = _json(run.results / "base" / "final" / "config.json")
    assert base["in_channels"] == 4 + 7 and base["cross_attention_dim"] == 32  # the tiny SD UNet, widened
    assert (run.results / "stage2" / "victr" / "final" / "adapter_model.safetensors").exists()  # LoRA
    assert not (run.results / "stage2" / "vanilla" / "final" / "adapter_model.safetensors").exists()  # full
    victr = _json(run.results / "metrics" / "victr" / "tweedie-2.json")
    vanilla = _json(run.results / "metrics" / "vanilla" / "euler-2.json")
    assert victr["sampling"]["sampler"] == "tweedie" and vanilla["sampling"]["sampler"] == "euler"
    for record in (victr, vanilla):
        _check_record(record, n_min=8)
        assert record["fid"]["status"].startswith("unavailable")  # no Inception weights
        mfid = record["fd_pretrained"]["m3d_clip"]  # MFID: each slice as an M3D-CLIP slab
        assert mfid["status"] == "ok" and _finite(mfid["value"]) and "repeated along z" in mfid["input"], mfid
    assert str(run.weights / "m3d_clip" / "inventory.csv") in _inputs(run, "metrics/victr/tweedie-2.json")
    table = pd.read_csv(run.results / "tables" / "victr_table2.csv")
    assert list(table["method"]) == ["vanilla", "victr"] and set(table["dataset"]) == {"BTCV"}
    fd = next(c for c in table.columns if c.startswith("FD (self-trained") and "CI" not in c)
    assert table[fd].map(_finite).all() and table["paper FID"].notna().all()
    assert table["MFID (M3D-CLIP)"].map(_finite).all()


def test_medsyn2_smoke_study(tmp_path):
    """MedSyn2: the 3D DiT (gated attention, depthwise convolution, x-prediction) on a 3D VAE, CXR-BERT
    report conditioning, Dormand-Prince sampling, whole-volume CT-CLIP FD (gated CT-RATE stand-in), the 2D
    DiT on SD 1.5's fine-tuned VAE, Table 1 (FD per CT window and plane), Table 5's SemiSeg task on the
    example pictures, Fig. 5 (progressive conditions)."""
    run = run_smoke_study("medsyn2", tmp_path, ["tables/medsyn2_table1.csv", "tables/medsyn2_table2.csv",
                                                "tables/medsyn2_table3.csv", "tables/medsyn2_table5.csv",
                                                "figures/progressive_grid.png"],
                          prioritize=["metrics/medsyn2/dopri5-2.json"])
    print(f"medsyn2_smoke: snakemake {run.seconds:.0f} s")
    cxr_bert = {"config.json", "configuration_cxrbert.py", "modeling_cxrbert.py", "pytorch_model.bin", "vocab.txt",
                "tokenizer_config.json", "special_tokens_map.json"}
    ct_clip = {"models/CT-CLIP-Related/CT-CLIP_v2.pt"}
    _check_fetched(run, {"cxr_bert": cxr_bert, "ct_clip": ct_clip, "sd15": {"vae/diffusion_pytorch_model.safetensors"}})
    # CT-RATE is gated: refused without the token, fetched with it; the public repos get no token
    assert all(r.authorization for r in run.hubs["ct_clip"].seen(server="hub"))
    assert not any(r.authorization for r in run.hubs["cxr_bert"].seen(server="hub"))
    assert str(run.weights / "cxr_bert" / "inventory.csv") in _inputs(run, "volumes/generator/final")
    assert str(run.weights / "sd15" / "inventory.csv") in _inputs(run, "vae/final")
    for folder, dims in (("volumes/generator/final", 3), ("stage2/medsyn2/final", 2)):
        config = _json(run.results / folder / "config.json")
        assert config["spatial_dims"] == dims and config["gated_attention"] and config["depthwise_conv"]
        assert config["prediction"] == "x0" and config["cross_attention_dim"] == 768  # CXR-BERT's width
    assert _json(run.results / "vae" / "train_config.json")["steps"] == 3  # SD 1.5's VAE fine-tuned
    volumes = _json(run.results / "volumes" / "metrics" / "dopri5-2.json")
    assert volumes["sampling"]["sampler"] == "dopri5" and volumes["sampling"]["steps"] == 2
    _check_record(volumes, n_min=2)
    assert _finite(volumes["fd_pretrained"]["ct_clip"]["value"]), volumes["fd_pretrained"]["ct_clip"]
    assert volumes["fd_pretrained"]["radimagenet_resnet50"]["status"].startswith("unavailable")
    _check_record(_json(run.results / "metrics" / "medsyn2" / "dopri5-2.json"), n_min=8)
    table = pd.read_csv(run.results / "tables" / "medsyn2_table1.csv")
    fd = next(c for c in table.columns if c.startswith("FD (self-trained") and "CI" not in c)
    three_d = table[table["data"] == "3D volumes"]
    assert set(three_d["plane"]) == {"XY", "YZ", "ZX", "mean"}
    assert set(three_d["window"]) == {"lung", "vessel", "soft_tissue", "bone", "mean"}
    assert set(table[table["data"] != "3D volumes"]["plane"]) == {"XY"} and table[fd].map(_finite).all()
    # Tables 2 / 3 (CT-CLIP's image and text sides from the gated CT-RATE stand-in, CXR-BERT's tokenizer): the
    # shipped scans have no reports and no abnormality labels, so T2I and zero-shot say why; I2I is a number
    scores = volumes["clip_scores"]["ct_clip"]
    assert scores["i2i"]["status"] == "ok" and _finite(scores["i2i"]["value"]), scores["i2i"]
    assert scores["t2i"]["status"].startswith("not applicable") and scores["zero_shot"]["status"].startswith("unavailable")
    assert str(run.weights / "cxr_bert" / "inventory.csv") in _inputs(run, "volumes/metrics/dopri5-2.json")
    t2 = pd.read_csv(run.results / "tables" / "medsyn2_table2.csv")
    ours = t2[t2["source"] == "MedSyn2"]
    assert len(ours) >= 1 and len(t2) > len(ours)  # ours beside the paper's rows
    t3 = pd.read_csv(run.results / "tables" / "medsyn2_table3.csv")
    assert t3.astype(str).apply(lambda c: c.str.startswith("unavailable")).any().any()
    _check_table5(run)
    assert (run.results / "figures" / "progressive_grid.png").stat().st_size > 10_000  # Fig. 5


def _check_table5(run) -> None:
    """Table 5's task on the SemiSeg stand-in (the example pictures, liver for GGO): the pictures train and score
    the task only (their splits are no generator's), with the learned channel alone, 4 re-windowed synthetic
    slices holding it, distances in pixels."""
    index = pd.concat(pd.read_csv(p) for p in (run.results / "trainsets" / "slices").glob("*.csv"))
    pictures = index[index["dataset"] == "example_pictures"]
    assert set(pictures["split"]) == {"downstream_train", "downstream_test"} and len(pictures) == 30
    table = pd.read_csv(run.results / "tables" / "medsyn2_table5.csv", keep_default_na=False)
    trained, references = table.iloc[:3], table.iloc[3:]
    assert list(trained["setting"]) == ["semiseg.real", "semiseg.real_synth-medsyn2", "semiseg.synth_only-medsyn2"]
    assert list(trained["n_images"]) == ["24", "28", "4"] and list(trained["paper training_data"]) == [
        "real", "combined", "synthesized"]
    assert "hd95 (pixel)" in table.columns and trained["dice (%)"].map(_finite).all()
    # the paper's reference rows: MedPSeg without its weights here (the record keeps the whole hint), Inf-Net none
    assert list(references["paper training_data"]) == ["MedPSeg (reference)", "Inf-Net (reference)"]
    assert list(references["dice (%)"]) == ["unavailable: MEDPSeg weights are not configured",
                                            "not computed: no reference segmenter configured for this row"]
    reference = _json(run.results / "downstream_reference" / "semiseg" / "medpseg.json")
    assert reference["n_test"] == 6 and "poly_medseg_25d_fix.ckpt" in reference["status"]
    for setting in trained["setting"]:
        record = _json(run.results / "downstream" / setting / "evaluation.json")
        assert record["task"] == "semiseg" and record["channels_learned"] == ["ggo"] and record["n_test"] == 6
        assert list(record["channels"]) == ["ggo"] and record["spacing_mm"] is None
    own = _json(run.results / "downstream" / "real" / "evaluation.json")  # the study's own slices, every channel
    assert own["task"] is None and len(own["channels_learned"]) == 8 and own["n_test"] == 20


def test_maisi_v2_smoke_study(tmp_path):
    """MAISI-v2: the released VAE (frozen), UNet and ControlNet (masks as MAISI label ids) fine-tuned in 3D
    with rectified flow, the HU quality check, the 2D region-specific contrastive loss, the main table."""
    run = run_smoke_study("maisi_v2", tmp_path, ["tables/maisi_main.csv", "tables/maisi_downstream.csv"],
                          prioritize=["metrics/contrastive/euler-2.json"])
    print(f"maisi_v2_smoke: snakemake {run.seconds:.0f} s")
    config = "configs/config_network_rflow.json"
    _check_fetched(run, {"maisi_vae": {"models/autoencoder_v1.pt", config},
                         "maisi_diffusion_unet": {"models/diff_unet_3d_rflow-ct.pt", config},
                         "maisi_controlnet": {"models/controlnet_3d_rflow-ct.pt", config}})
    generator = _inputs(run, "volumes/generator/final")
    assert {str(run.weights / n / "inventory.csv") for n in ("maisi_diffusion_unet", "maisi_controlnet")} <= generator
    assert str(run.weights / "maisi_vae" / "inventory.csv") in _inputs(run, "volumes/vae/final")
    backbone = _json(run.results / "volumes" / "generator" / "final" / "config.json")
    assert backbone["_class_name"] == "MaisiBackbone" and backbone["mask_input"] == "control"
    assert len(backbone["control_label_ids"]) == 14 and backbone["unet_params"]["include_spacing_input"]
    volumes = _json(run.results / "volumes" / "metrics" / "euler-2.json")
    _check_record(volumes)
    assert volumes["hu_qc"]["enabled"] and volumes["hu_qc"]["method"] == "union"
    contrastive = _json(run.results / "metrics" / "contrastive" / "euler-2.json")
    assert contrastive["sampling"]["sampler"] == "euler"
    _check_record(contrastive, n_min=8)
    assert contrastive["hu_qc"]["enabled"] and 0 <= contrastive["hu_qc"]["pass_rate"] <= 1
    curve = pd.read_csv(run.results / "stage2" / "contrastive" / "loss_curve.csv")  # the region contrastive term
    assert {"flow", "contrastive", "contrastive_weight"} <= set(curve.columns)
    assert curve["contrastive"].map(_finite).all()
    table = pd.read_csv(run.results / "tables" / "maisi_main.csv")
    ours = table[table["source"] == "ours"]
    assert list(ours["method"]) == ["volumes (euler)", "contrastive (euler)"]
    fd = next(c for c in table.columns if c.startswith("FD (self-trained") and "CI" not in c)
    assert ours[fd].map(_finite).all() and (table["source"] == "paper").any()
    # the tumour study: a 3D segmenter per setting of the stand-in task, the generated volumes from its masks
    synthetic = _json(run.results / "volumes" / "downstream" / "liver" / "real_synth" / "evaluation.json")
    real = _json(run.results / "volumes" / "downstream" / "liver" / "real" / "evaluation.json")
    assert real["n_train_synthetic"] == 0 and synthetic["n_train_synthetic"] == synthetic["n_train_real"] > 0
    assert 0 <= real["dice"] <= 1 and real["n_test"] >= 1
    tumours = pd.read_csv(run.results / "tables" / "maisi_downstream.csv")
    liver = tumours[tumours["tumour"] == "liver"].set_index("method")
    assert abs(float(liver.loc["real only", "Dice"]) - real["dice"]) < 1e-6
    assert abs(float(liver.loc["MAISI-v2", "Dice"]) - synthetic["dice"]) < 1e-6  # the 3D generator has the loss
    assert liver.loc["ControlNet only", "Dice"].startswith("unavailable")
    curve = pd.read_csv(run.results / "volumes" / "generator" / "loss_curve.csv")  # the 3D contrastive term
    assert {"contrastive", "contrastive_weight"} <= set(curve.columns) and curve["contrastive"].map(_finite).all()
    assert tumours[tumours["tumour"] == "liver_tumor"]["Dice"].str.startswith("unavailable").all()
    assert tumours.loc[tumours["tumour"] == "liver_tumor", "paper Dice"].notna().all()


def test_meddiff_ft_smoke_study(tmp_path):
    """MedDiff-FT: SD 1.5 inpainting (frozen VAE, its 9-channel UNet with its own inputs + the lesion channel,
    CLIP) fine-tuned in full with the DDPM loss, DDIM with guidance, the stochastic mask generator, the quality
    filter with erosion and the meddiff_ft table."""
    run = run_smoke_study("meddiff_ft", tmp_path, ["tables/meddiff_ft.csv", "tables/meddiff_ft_mean.csv"])
    print(f"meddiff_ft_smoke: snakemake {run.seconds:.0f} s")
    _check_fetched(run, {"sd15_inpainting": {"model_index.json", "unet/diffusion_pytorch_model.safetensors",
                                             "vae/diffusion_pytorch_model.safetensors",
                                             "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json"}})
    base = _json(run.results / "base" / "final" / "config.json")
    # the release's 9 inputs (4 latent + inpainting mask + 4 masked-image latent) + the one condition channel
    assert base["in_channels"] == 10
    assert _json(run.results / "stage2" / "meddiff_ft" / "final" / "config.json")["in_channels"] == 10
    assert str(run.weights / "sd15_inpainting" / "inventory.csv") in _inputs(run, "stage2/meddiff_ft/final")
    settings = ["real", "real_synth-meddiff_ft", "real_synth_mgf-meddiff_ft"]
    for setting in settings:
        evaluation = _json(run.results / "downstream" / setting / "evaluation.json")
        assert _finite(evaluation["mdsc"]), setting
    table = pd.read_csv(run.results / "tables" / "meddiff_ft.csv")
    assert set(table["setting"]) == set(settings)
    assert table["mDSC (%)"].map(_finite).all()
    kept = table.set_index("setting").loc["real_synth_mgf-meddiff_ft", "synthetic kept by the filter"]
    assert isinstance(kept, str) and " of " in kept
    # the mean over the benchmark studies (here the one smoke study): its gain, the paper's 1.0 beside the mean
    mean = pd.read_csv(run.results / "tables" / "meddiff_ft_mean.csv")
    gain = table.set_index("setting").loc["real_synth_mgf-meddiff_ft", "gain over real (points)"]
    assert list(mean["benchmark study"]) == ["meddiff_ft_smoke", "mean over 1"]
    assert mean["Dice gain (points)"].astype(float).tolist() == pytest.approx([gain, gain])
    assert mean["paper mean Dice gain (%)"].iloc[-1] == 1.0
