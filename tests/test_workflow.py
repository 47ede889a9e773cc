"""The workflow through Snakemake: the embedded study, a local study with broken cases, lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from dicom_writer import write_series
from workflow import REPO, embedded_config, run_snakemake


DATA_TARGETS = ("results/{study}/manifest.csv", "results/{study}/qc/ingest_quarantine.csv")


def _data_targets(study="example"):
    return tuple(t.format(study=study) for t in DATA_TARGETS)


def test_embedded_study_runs_to_manifest_and_qc(tmp_path):
    run_snakemake(tmp_path, embedded_config(), *_data_targets())
    results = tmp_path / "results" / "example"
    manifest = pd.read_csv(results / "manifest.csv", dtype=str, keep_default_na=False)
    assert manifest["case_id"].tolist() == [
        "example_abdomen_mr", "example_abdomen_pelvis_ct", "example_chest_cta", "example_upper_abdomen_ct"]
    assert manifest.set_index("case_id")["split"].to_dict() == {
        "example_abdomen_mr": "train", "example_abdomen_pelvis_ct": "train",
        "example_chest_cta": "test", "example_upper_abdomen_ct": "train"}
    assert set(manifest["modality"]) == {"CT", "MR"}
    for path in manifest["path"]:
        assert (tmp_path / path).exists()
    assert pd.read_csv(results / "qc" / "ingest_quarantine.csv").empty
    inventory = pd.read_csv(results / "raw" / "example" / "inventory.csv")
    assert len(inventory) == 7  # six scans + the attribution README
    # a second run has nothing to do
    again = run_snakemake(tmp_path, embedded_config(), *_data_targets(), extra=("-n",))
    assert "Nothing to be done" in again.stdout + again.stderr


def test_local_study_quarantines_broken_cases_and_keeps_the_rest(tmp_path, example_dir, ct_small):
    root = tmp_path / "scans"
    root.mkdir()
    shutil.copy(example_dir / "ct" / "abdomen_pelvis_ct_3mm.nii.gz", root / "good_ct.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    write_series(ct_small, root / "dicom_ok", patient_id="P9", series_number=2, compress="jpeg2000")
    write_series(ct_small, root / "dicom_gap", patient_id="P8", series_number=5, drop_slices=(4,))
    config = embedded_config(study="mine", datasets=[{"name": "mine", "kind": "local", "root": str(root)}],
                             splits={"fractions": {"train": 1.0}})
    run_snakemake(tmp_path, config, *_data_targets("mine"))
    results = tmp_path / "results" / "mine"
    manifest = pd.read_csv(results / "manifest.csv")
    quarantine = pd.read_csv(results / "qc" / "ingest_quarantine.csv").set_index("case_id")
    assert sorted(manifest["case_id"]) == ["mine_P9_2", "mine_good_ct"]
    assert sorted(quarantine.index) == ["mine_P8_5", "mine_broken"]
    assert quarantine.loc["mine_P8_5", "reason"].startswith("missing slice")
    assert quarantine.loc["mine_broken", "reason"].startswith("unreadable")


def test_corrupted_shipped_file_fails_download_with_clear_message(tmp_path, example_dir):
    copy = tmp_path / "example_copy"
    shutil.copytree(example_dir, copy)
    (copy / "mr" / "abdomen_mr_3mm.nii.gz").write_bytes(b"tampered")
    config = embedded_config(datasets=[{"name": "example", "root": str(copy)}])
    proc = run_snakemake(tmp_path, config, *_data_targets(), check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results" / "example" / "logs" / "download" / "example.log").read_text()
    assert "ChecksumMismatch" in log and "abdomen_mr_3mm.nii.gz" in log
    assert not (tmp_path / "results" / "example" / "raw" / "example" / "inventory.csv").exists()


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_full_embedded_study_produces_registered_masks_training_sets_and_figures(tmp_path):
    """`snakemake --cores 2` end to end on the shipped scans (the README's first command), VAE and generator included."""
    run_snakemake(tmp_path, embedded_config())
    results = tmp_path / "results" / "example"
    registered = pd.read_csv(results / "registered" / "shard-000" / "cases.csv")
    assert (registered["status"] == "ok").all()
    for path in registered["transform_path"]:
        assert (tmp_path / path).exists()
    masks = pd.read_csv(results / "masks" / "shard-000" / "cases.csv").set_index("case_id")
    assert masks.loc["example_abdomen_mr", "segmenter"] == "shipped_total_mr"
    assert masks.loc["example_upper_abdomen_ct", "ml_liver"] > 300  # liver found in the registered CT
    slices = pd.read_csv(results / "trainsets" / "slices" / "shard-000.csv")
    assert set(slices["case_id"]) == set(masks.index) and len(slices) > 100
    assert {"organs", "prompt_region", "split", "modality", "slice"} <= set(slices.columns)
    from medsynth.io.trainsets import load_shard

    data = load_shard(results / "trainsets" / "slices" / "shard-000.safetensors")
    assert data["image"].shape[1:] == (1, 64, 64) and data["image"].shape[0] == len(slices)
    assert data["masks"].shape[1] == 5
    volumes = load_shard(results / "trainsets" / "volumes" / "shard-000.safetensors")
    assert volumes["image"].shape == (4, 1, 64, 64, 64)
    for figure in ("registration_overlay.png", "mask_overlay.png"):
        assert (results / "figures" / figure).stat().st_size > 10_000
    assert pd.read_csv(results / "qc" / "quarantine.csv").empty
    # generative core: VAE, base, stage 1, stage 2 per variant
    assert (results / "vae" / "final" / "config.json").exists()
    reconstruction = pd.read_csv(results / "vae" / "reconstruction.csv").set_index("target")
    assert reconstruction.loc["image", "ssim"] > 0 and reconstruction.loc["liver", "dice"] >= 0
    for variant in ("victr", "vanilla"):
        assert (results / "stage2" / variant / "final").is_dir()
    assert (results / "stage2" / "victr" / "final" / "adapter_model.safetensors").exists()
    assert (results / "stage2" / "vanilla" / "final" / "diffusion_pytorch_model.safetensors").exists()
    for stage in ("vae", "base", "stage1", "stage2/victr", "stage2/vanilla"):
        curve = pd.read_csv(results / stage / "loss_curve.csv")
        loss = curve["total" if stage == "vae" else "loss"]
        assert len(curve) > 20
        if stage in ("vae", "base"):
            assert loss.tail(10).mean() < loss.head(10).mean(), stage
    # sampling, metrics, downstream segmentation, every paper table and the report
    import json

    tables = results / "tables"
    for name in ("victr_table2", "victr_table3", "victr_table4", "medsyn2_table1", "medsyn2_table2", "medsyn2_table3",
                 "medsyn2_table5", "medsyn2_table6", "medsyn2_table7", "medsyn2_ablation", "maisi_steps", "maisi_main",
                 "maisi_contrastive", "maisi_hu_qc", "meddiff_ft"):
        table = pd.read_csv(tables / f"{name}.csv")
        published = (any(c.startswith("paper") for c in table.columns) or (table.get("source") == "paper").any()
                     or (table.get("from") == "paper").any())
        assert len(table) and published, name
        assert (tables / f"{name}.md").read_text().startswith("## "), name
    t2 = pd.read_csv(tables / "victr_table2.csv").set_index("method")
    fd = [c for c in t2.columns if c.startswith("FD (self-trained")][0]
    assert set(t2.index) == {"vanilla", "victr"} and (t2[fd] > 0).all()
    assert t2["FID (InceptionV3)"].str.startswith("unavailable: no Inception weights").all()  # none on this machine
    assert t2["MFID (M3D-CLIP)"].str.startswith("unavailable: metrics.m3d_clip_pretrained_path is not set").all()
    clip = pd.read_csv(tables / "medsyn2_table2.csv").set_index("source")
    assert clip.loc["MedSyn2"].iloc[0]["CT-CLIP I2I (%)"].startswith("unavailable")  # ours first, then the paper's
    t3 = pd.read_csv(tables / "victr_table3.csv")
    assert list(t3["setting"]) == ["real", "real_aug", "real_synth-vanilla", "real_synth-victr", "synth_only-victr",
                                   "real_synth_mg-victr", "real_synth_mgf-victr", "real_synth_gm-victr"]
    assert t3["mDSC (%)"].between(0, 100).all()
    t4 = pd.read_csv(tables / "victr_table4.csv").set_index("model")
    assert t4.loc["fsf", "run"] == "euler-1" and t4.loc["dmd", "run"] == "euler-1"  # the one-step students
    assert json.loads((results / "stage2" / "dmd" / "final" / "medsynth_stage2.json").read_text())["one_step"]
    t1 = pd.read_csv(tables / "medsyn2_table1.csv")  # 2D slices (XY) and the 3D path's XY / YZ / ZX
    assert {"XY", "YZ", "ZX"} <= set(t1.loc[t1["data"] == "3D volumes", "plane"])
    assert set(t1.loc[t1["data"] == "2D slices (victr)", "plane"]) == {"XY"}
    volumes = load_shard(results / "volumes" / "samples" / "euler-10" / "eval.safetensors")
    assert volumes["image"].shape[1:] == (1, 64, 64, 64)
    steps = pd.read_csv(tables / "maisi_steps.csv")
    assert {"euler", "heun", "tweedie", "dopri5"} <= set(steps["sampler"])
    # every measured cell with its bootstrap interval; the claims table with a verdict for every claim
    assert (t3["mDSC (%) CI low"] <= t3["mDSC (%)"]).all() and (t3["mDSC (%)"] <= t3["mDSC (%) CI high"]).all()
    assert (t2[f"{fd} CI low"] < t2[fd]).all() and "[" in (tables / "victr_table2.md").read_text()
    claims = pd.read_csv(tables / "claims.csv", keep_default_na=False)
    assert len(claims) >= 20 and set(claims["verdict"]) <= {"reproduced", "contradicted", "not resolvable"}
    assert (claims.loc[claims["paired"] == "paired", "low"] != "").all()
    assert (claims["published effect"] != "").all()
    calibration = pd.read_csv(tables / "calibration.csv", keep_default_na=False).set_index("row")
    assert {"VAE reconstruction", "blur_7px", "victr (euler-30)"} <= set(calibration.index)
    assert float(calibration.loc["uniform_noise", fd]) > float(calibration.loc["blur_7px", fd])

    # the reader-study kit of the study's own samples (rules/readers.smk), its key kept apart
    kit_cases = pd.read_csv(results / "readers" / "kit" / "cases.csv")
    key = pd.read_csv(results / "readers" / "key.csv")
    assert list(kit_cases.columns) == ["case_id"] and list(key["case_id"]) == list(kit_cases["case_id"])
    assert set(key["truth"]) == {"real", "synthetic"} and (results / "readers" / "kit" / "index.html").exists()
    # a simulated reader's answers scored through rule reader_scores: every case right, all "match"
    answers = results / "readers" / "answers"
    answers.mkdir()
    pd.DataFrame({"reader_id": "simulated", "case_id": key["case_id"], "turing": key["truth"],
                  "match": "match"}).to_csv(answers / "answers-simulated.csv", index=False)
    run_snakemake(tmp_path, embedded_config(), "results/example/readers/scores/visual_turing.csv")
    turing = pd.read_csv(results / "readers" / "scores" / "visual_turing.csv")
    assert turing.loc[turing["reader"] == "simulated", "accuracy"].astype(float).tolist() == [1.0]
    victr = json.loads((results / "metrics" / "victr" / "euler-30.json").read_text())
    assert 0 <= victr["controllability"]["generated"]["accuracy"] <= 1 and victr["pairs"]["ssim"] > 0
    report = (tmp_path / "results" / "example" / "report.html")
    assert report.stat().st_size > 100_000
    html = report.read_text(errors="ignore")
    for figure in ("fd_vs_nfe.png", "sample_grid.png", "loss_curves.png", "maisi_steps.csv", "claims.csv",
                   "calibration.csv"):
        assert figure in html, figure


def test_workflow_files_are_snakefmt_clean():
    """``snakefmt --check`` (the formatter pinned in the lock) passes on the Snakefile and every rule file."""
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    assert snakefmt, "snakefmt is not installed (it is pinned in requirements/lock.txt)"
    files = [str(REPO / "Snakefile"), *sorted(str(p) for p in (REPO / "rules").glob("*.smk"))]
    proc = subprocess.run([snakefmt, "--check", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
