"""Paper tables: published values are looked up row by row, a missing one still renders, files are written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medsynth.tables import NOT_MEASURED, NOT_REPORTED, build_table, make_table, reported
from medsynth.tables.builders import medsyn2_table7, victr_table2, victr_table4

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper_reported"


def metrics(model: str, run: str = "euler-30", fd: float = 12.5) -> dict:
    return {
        "model": model, "run": run, "n_real": 10, "n_generated": 10, "image_size": [64, 64],
        "sampling": {"sampler": run.split("-")[0], "steps": 30, "nfe": 30, "network_evals": 60,
                     "seconds_per_sample": 0.01},
        "fid": {"value": None, "status": "unavailable: no Inception weights (test)"},
        "fd_self": {"value": fd, "kid_mean": 0.1, "extractor": "self-trained unet encoder, downstream 'real'"},
        "windowed": [{"window": "lung", "plane": "XY", "fd": 3.0}, {"window": "mean", "plane": "XY", "fd": 3.0}],
        "mask_fidelity": {"segmenter": "seg", "distance_unit": "mm",
                          "generated_vs_gt": {"liver": {"dice": 0.5, "jaccard": 0.33, "hd95": 12.0, "asd": 3.0,
                                                        "n_reference": 4, "status": "ok"},
                                              "spleen": {"dice": None, "jaccard": None, "hd95": None, "asd": None,
                                                         "n_reference": 0, "status": "empty"}},
                          "real_vs_gt": {}},
    }


def test_reported_finds_rows_and_says_when_the_paper_has_none():
    from medsynth.tables import load_reported

    t2 = load_reported(PAPER, "victr_table2")
    assert reported(t2, "value", dataset="BTCV", backbone="Stable Diffusion", method="vanilla", metric="FID") == 25.44
    assert reported(t2, "value", dataset="BTCV", backbone="No Such Net", method="vanilla", metric="FID") == NOT_REPORTED
    assert reported(t2, "no_such_column", dataset="BTCV") == NOT_REPORTED
    assert reported(load_reported(PAPER, "no_such_table"), "value") == NOT_REPORTED


def test_victr_table2_puts_ours_beside_the_paper_and_keeps_unavailable_fid_as_text():
    table = victr_table2({"vanilla": metrics("vanilla", fd=20.0), "victr": metrics("victr", fd=10.0)},
                         "unet2d_condition", PAPER, [{"dataset": "BTCV", "vanilla": "vanilla", "victr": "victr"}])
    row = table.set_index("method").loc["victr"]
    assert row["paper FID"] == 21.98 and row["backbone"] == "Stable Diffusion"
    # steps and seconds are published per backbone over all datasets (dataset "all")
    assert row["paper steps"] == 4 and row["paper seconds"] == 3.12
    assert row["FID (InceptionV3)"].startswith("unavailable: no Inception weights")
    fd_column = [c for c in table.columns if c.startswith("FD (")][0]
    assert "self-trained" in fd_column and row[fd_column] == 10.0
    assert row["scale"] == "10 real vs 10 generated 64x64 slices"


def test_table_with_a_missing_paper_value_still_renders(tmp_path):
    rows = [{"group": "loss", "setting": "diff", "model": "a"},
            {"group": "made_up_group", "setting": "nothing", "model": "b"}]
    table = victr_table4(rows, {"a": metrics("a"), "b": metrics("b", fd=7.0)}, PAPER)
    assert table.loc[0, "paper FID"] == 18.77 and table.loc[1, "paper FID"] == NOT_REPORTED
    from medsynth.tables import write_table

    write_table(table, tmp_path / "t.csv", tmp_path / "t.md", "T4")
    md = (tmp_path / "t.md").read_text()
    assert "not reported" in md and "18.77" in md and md.startswith("## T4")
    assert pd.read_csv(tmp_path / "t.csv").shape == table.shape


def test_victr_table2_has_one_row_pair_per_target_dataset():
    loaded = {m: metrics(m, fd=fd) for m, fd in (("vanilla", 20.0), ("victr", 10.0), ("vanilla_amos", 30.0),
                                                  ("victr_amos", 15.0))}
    columns = [{"dataset": "BTCV", "vanilla": "vanilla", "victr": "victr"},
               {"dataset": "AMOS", "vanilla": "vanilla_amos", "victr": "victr_amos"}]
    table = victr_table2(loaded, "unet2d_condition", PAPER, columns)
    assert list(zip(table["dataset"], table["method"], table["model"])) == [
        ("BTCV", "vanilla", "vanilla"), ("BTCV", "victr", "victr"), ("AMOS", "vanilla", "vanilla_amos"),
        ("AMOS", "victr", "victr_amos")]
    amos = table.set_index(["dataset", "method"]).loc[("AMOS", "victr")]
    assert amos["paper FID"] == 20.37 and amos["paper MFID (M3D-CLIP)"] == 19.11
    fd_column = [c for c in table.columns if c.startswith("FD (")][0]
    assert amos[fd_column] == 15.0
    assert amos["MFID (M3D-CLIP)"] == "not measured in this study"  # a record without the M3D-CLIP entry
    loaded["victr_amos"]["fd_pretrained"] = {"m3d_clip": {"value": 4.25, "status": "ok"}}
    loaded["vanilla_amos"]["fd_pretrained"] = {"m3d_clip": {"value": None, "status": "unavailable: metrics."
                                                            "m3d_clip_pretrained_path is not set (set it to ...)"}}
    table = victr_table2(loaded, "unet2d_condition", PAPER, columns).set_index(["dataset", "method"])
    assert table.loc[("AMOS", "victr"), "MFID (M3D-CLIP)"] == 4.25
    assert table.loc[("AMOS", "vanilla"), "MFID (M3D-CLIP)"] == "unavailable: metrics.m3d_clip_pretrained_path is not set"


def test_missing_paper_file_renders_every_paper_cell_as_not_reported(tmp_path):
    table = victr_table2({"victr": metrics("victr")}, "unet2d_condition", tmp_path / "empty",
                         [{"dataset": "BTCV", "vanilla": "victr", "victr": "victr"}])
    assert (table[["paper FID", "paper MFID (M3D-CLIP)"]] == NOT_REPORTED).all().all()


def test_medsyn2_table7_union_of_objects_and_empty_channels_explained():
    recon = pd.DataFrame([{"target": "image", "dice": None}, {"target": "liver", "dice": 0.9, "jaccard": 0.8,
                                                              "hd95": 1.0, "asd": 0.5, "n_reference": 5, "status": "ok"}])
    table = medsyn2_table7(metrics("victr"), recon, PAPER)
    gen = table[table["comparison"] == "generated_vs_gt"].set_index("object")
    assert gen.loc["liver", "dice (%)"] == 50.0
    assert gen.loc["spleen", "dice (%)"] == "no reference voxels"
    assert gen.loc["airway", "dice (%)"] == NOT_MEASURED and gen.loc["airway", "paper dice (%)"] == 69.07


def test_make_table_from_files(tmp_path):
    files = {}
    for model in ("vanilla", "victr"):
        files[model] = tmp_path / f"{model}.json"
        files[model].write_text(json.dumps(metrics(model)))
    params = {"paper_dir": str(PAPER), "columns": [{"dataset": "AMOS", "vanilla": "vanilla", "victr": "victr"}],
              "backbone": "unet2d_condition"}
    make_table("victr_table2", {k: str(v) for k, v in files.items()}, params, tmp_path / "t2.csv", tmp_path / "t2.md")
    out = pd.read_csv(tmp_path / "t2.csv")
    assert list(out["method"]) == ["vanilla", "victr"] and out.loc[0, "paper FID"] == 25.43  # AMOS row
    with pytest.raises(KeyError):
        build_table("no_such_table", {}, params)


def test_meddiff_table_gains_over_real_and_filter_counts():
    from medsynth.tables.builders import meddiff_ft

    def ev(mdsc, filt=None):
        return {"mdsc": mdsc, "mhd95": 10.0, "hd95_unit": "mm", "n_train_real": 10, "n_train_synthetic": 3,
                "steps": 5, "n_test": 4, "meddiff_filter": filt}

    table = meddiff_ft({"real": ev(0.30), "real_synth-victr": ev(0.32), "real_synth_mg-victr": ev(0.33),
                        "real_synth_mgf-victr": ev(0.35, {"kept": 7, "of": 14})}, PAPER).set_index("setting")
    assert table.loc["real", "gain over real (points)"] == ""
    assert abs(table.loc["real_synth_mgf-victr", "gain over real (points)"] - 5.0) < 1e-9
    assert table.loc["real_synth_mgf-victr", "synthetic kept by the filter"] == "7 of 14"
    assert table.loc["real_synth_mgf-victr", "paper mean Dice gain (%)"] == 1.0


def _with_intervals(record: dict, estimates: dict, replicates: dict, digest: str = "abc") -> dict:
    return {**record, "estimates": {k: {"value": v[0], "low": v[1], "high": v[2]} for k, v in estimates.items()},
            "bootstrap": {"resamples": 4, "level": 0.9, "seed": 0, "unit": "patient (6 patients)", "n_units": 6,
                          "units_digest": digest, "replicates": replicates}}


def test_a_value_with_its_interval_is_one_cell_in_markdown_and_three_columns_in_the_csv(tmp_path):
    from medsynth.tables import write_table

    vanilla = _with_intervals(metrics("vanilla", fd=20.0), {"fd_self": (20.0, 18.5, 22.25)}, {})
    table = victr_table2({"vanilla": vanilla, "victr": metrics("victr", fd=10.0)}, "unet2d_condition", PAPER,
                         [{"dataset": "BTCV", "vanilla": "vanilla", "victr": "victr"}])
    write_table(table, tmp_path / "t.csv", tmp_path / "t.md", "T")
    out = pd.read_csv(tmp_path / "t.csv")
    fd = [c for c in out.columns if c.startswith("FD (")][0]
    assert list(out.columns[list(out.columns).index(fd):][:3]) == [fd, f"{fd} CI low", f"{fd} CI high"]
    assert out.loc[0, fd] == 20.0 and out.loc[0, f"{fd} CI low"] == 18.5 and out.loc[0, f"{fd} CI high"] == 22.25
    assert out.loc[1, fd] == 10.0 and pd.isna(out.loc[1, f"{fd} CI low"])  # no interval: the cell stays empty
    md = (tmp_path / "t.md").read_text()
    assert "20 [18.5, 22.25]" in md
    assert md.count("90 % percentile bootstrap interval, 4 resamples of the test patient (6 patients)") == 1


def test_a_gain_over_real_has_the_interval_of_the_paired_differences():
    from medsynth.tables.builders import meddiff_ft
    from medsynth.tables.render import Measured

    def ev(mdsc, reps, digest="abc"):
        record = {"mdsc": mdsc, "mhd95": 10.0, "hd95_unit": "mm", "n_train_real": 10, "n_train_synthetic": 3,
                  "steps": 5, "n_test": 4, "meddiff_filter": None}
        return _with_intervals(record, {"mdsc": (mdsc, min(reps), max(reps))}, {"mdsc": reps}, digest)

    real = ev(0.30, [0.20, 0.30, 0.40, 0.30])
    # the same resamples move together: every paired difference is +0.02 although both spread by 0.2
    table = meddiff_ft({"real": real, "real_synth-victr": ev(0.32, [0.22, 0.32, 0.42, 0.32])}, PAPER)
    gain = table.set_index("setting").loc["real_synth-victr", "gain over real (points)"]
    assert isinstance(gain, Measured) and gain.value == pytest.approx(2.0)
    assert gain.low == pytest.approx(2.0) and gain.high == pytest.approx(2.0) and "paired" in gain.how
    other = meddiff_ft({"real": real, "real_synth-victr": ev(0.32, [0.22, 0.32, 0.42, 0.32], digest="xyz")}, PAPER)
    assert other.set_index("setting").loc["real_synth-victr", "gain over real (points)"] == pytest.approx(2.0)


def test_maisi_downstream_table_gives_ours_beside_the_papers_rows_and_says_why_for_the_rest():
    from medsynth.tables.maisi_downstream import METHODS, TUMOURS, maisi_downstream

    def ev(dice, n_synth=0):
        return {"dice": dice, "n_train_real": 8, "n_train_synthetic": n_synth, "steps": 3, "n_test": 2}

    table = maisi_downstream({"liver_tumor/real": ev(0.60), "liver_tumor/real_synth": ev(0.65, 8),
                              "kidney/real": ev(0.9)}, PAPER, contrastive=False)
    assert list(dict.fromkeys(table["tumour"])) == [*TUMOURS, "kidney"]  # the paper's five first
    assert len(table) == len(METHODS) * 6
    liver = table[table["tumour"] == "liver_tumor"].set_index("method")
    assert liver.loc["real only", "Dice"] == 0.60 and liver.loc["real only", "gain over real only (points)"] == ""
    assert abs(liver.loc["ControlNet only", "gain over real only (points)"] - 5.0) < 1e-9
    assert liver.loc["ControlNet only", "paper Dice"] == 0.693
    assert abs(liver.loc["ControlNet only", "paper gain (points)"] - 3.1) < 1e-9  # 0.693 - 0.662
    assert liver.loc["MAISI-v2", "Dice"].startswith("unavailable: the 3D path trains one generator, here without")
    assert liver.loc["MAISI-v2", "paper Dice"] == 0.695
    assert "train 8 real + 8 generated volumes" in liver.loc["ControlNet only", "scale"]
    lung = table[table["tumour"] == "lung_tumor"].set_index("method")
    assert lung.loc["real only", "Dice"].startswith("unavailable: no lung_tumor task")
    bone = table[table["tumour"] == "bone_lesion"].set_index("method")
    assert "bone-lesion" in bone.loc["real only", "Dice"] and bone.loc["real only", "paper Dice"] == 0.504
    assert table[table["tumour"] == "kidney"].set_index("method").loc["real only", "paper Dice"] == NOT_REPORTED
    # a 3D generator trained with the contrastive loss is the MAISI-v2 row; ControlNet only then says why not
    liver = maisi_downstream({"liver_tumor/real": ev(0.60), "liver_tumor/real_synth": ev(0.65, 8)}, PAPER,
                             contrastive=True).query("tumour == 'liver_tumor'").set_index("method")
    assert liver.loc["MAISI-v2", "Dice"] == 0.65 and abs(liver.loc["MAISI-v2", "paper gain (points)"] - 3.3) < 1e-9
    assert liver.loc["ControlNet only", "Dice"].startswith("unavailable: the 3D path trains one generator, here with")
