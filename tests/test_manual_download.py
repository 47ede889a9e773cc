"""A dataset behind an agreement (BTCV): the download rule stops and prints the exact manual steps."""

from __future__ import annotations

from workflow import embedded_config, run_snakemake


def test_btcv_without_files_prints_the_manual_steps(tmp_path):
    config = embedded_config(study="btcv_try", datasets=[{"name": "btcv", "root": str(tmp_path / "btcv")}])
    proc = run_snakemake(tmp_path, config, "results/btcv_try/raw/btcv/inventory.csv", check=False)
    assert proc.returncode != 0
    printed = proc.stdout + proc.stderr
    assert "syn3193805" in printed and "RawData.zip" in printed and str(tmp_path / "btcv") in printed
    assert not (tmp_path / "results" / "btcv_try" / "raw" / "btcv" / "inventory.csv").exists()


def test_btcv_with_files_in_place_is_inventoried(tmp_path, example_dir):
    import shutil

    img = tmp_path / "btcv" / "RawData" / "Training" / "img"
    lab = tmp_path / "btcv" / "RawData" / "Training" / "label"
    img.mkdir(parents=True)
    lab.mkdir(parents=True)
    shutil.copy(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", img / "img0001.nii.gz")
    shutil.copy(example_dir / "labels" / "upper_abdomen_ct_3mm_total.nii.gz", lab / "label0001.nii.gz")
    config = embedded_config(study="btcv_try", datasets=[{"name": "btcv", "root": str(tmp_path / "btcv")}],
                             splits={"fractions": {"train": 1.0}})
    run_snakemake(tmp_path, config, "results/btcv_try/manifest.csv")
    import pandas as pd

    manifest = pd.read_csv(tmp_path / "results" / "btcv_try" / "manifest.csv")
    assert manifest["case_id"].tolist() == ["btcv_img0001"]  # the label map is not a case of its own
    assert manifest.loc[0, "label_path"].endswith("labels/btcv_img0001.nii.gz")
