"""MedSyn2 Tables 2 and 3: the volume metrics' ``clip_scores`` (CT-CLIP T2I / I2I / zero-shot, with the Real
rows) from the training-set index rows of the real volumes, and the two table builders on hand-made records.

The CT-CLIP checkpoint and tokenizer are the tiny ones of tests/test_clip_scores.py (published key names,
random values).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_clip_extractors import ct_volumes
from test_clip_scores import tiny_text_side, write_checkpoint, write_tokenizer

from medsynth.evaluation.clip_scores import LABEL_PREFIX, abnormality_labels, ct_clip_reports, volume_clip_scores
from medsynth.metrics.clip_scores import CT_RATE_ABNORMALITIES, ct_clip_scores
from medsynth.tables.medsyn2_clip import NO_VOLUMES, medsyn2_table2, medsyn2_table3

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HU = (-1024.0, 1024.0)
FINDINGS = ["Lung nodule is present.", "The lungs are clear (no nodule).", "Pleural effusion.", "Heart normal."]
IMPRESSIONS = ["Nodule.", "Not given.", "", "Normal heart."]


def units(hu: torch.Tensor) -> torch.Tensor:
    return (hu.clamp(*HU) - HU[0]) / (HU[1] - HU[0]) * 2.0 - 1.0


def labels_array() -> np.ndarray:
    labels = np.zeros((4, 18), dtype=int)
    labels[[0, 2], 9] = 1  # lung nodule
    labels[[1], 12] = 1  # pleural effusion
    return labels


def index_rows(reports: bool = True, labels: bool = True) -> pd.DataFrame:
    table = pd.DataFrame({"case_id": [f"ct_rate_valid_{i}_a_1" for i in range(4)], "modality": "CT"})
    if reports:
        table["prompt_report"], table["prompt_impression"] = FINDINGS, IMPRESSIONS
    if labels:
        for k, name in enumerate(CT_RATE_ABNORMALITIES):
            table[LABEL_PREFIX + name] = [str(v) for v in labels_array()[:, k]]  # the index holds text
    return table


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct_clip")
    _, _, state = tiny_text_side()
    return {"ct_clip_pretrained_path": str(write_checkpoint(folder, state)),
            "ct_clip_tokenizer_pretrained_path": str(write_tokenizer(folder / "cxr_bert"))}


@pytest.fixture(scope="module")
def volumes():
    return units(ct_volumes(4, 0)), units(ct_volumes(4, 1, shift=300.0, radius2=0.3))


def test_reports_and_labels_from_the_index():
    texts = ct_clip_reports(index_rows())
    assert texts[0] == "Lung nodule is present.Nodule." and texts[1] == "The lungs are clear no nodule."
    assert texts[2] == "Pleural effusion." and texts[3] == "Heart normal.Normal heart."
    assert ct_clip_reports(index_rows(reports=False)).startswith("not applicable: no reports in the training-set")
    empty = index_rows().assign(prompt_report="", prompt_impression="")
    assert ct_clip_reports(empty).startswith("not applicable: no reports")
    np.testing.assert_array_equal(abnormality_labels(index_rows()), labels_array())
    assert abnormality_labels(index_rows(labels=False)).startswith(
        "unavailable: the case table has no CT-RATE abnormality labels (")
    partial = index_rows().drop(columns=[LABEL_PREFIX + "Emphysema"])
    assert "abnormality_Emphysema" in abnormality_labels(partial)
    assert abnormality_labels(index_rows().assign(**{LABEL_PREFIX + "Emphysema": ""})).startswith("unavailable")


def test_volume_clip_scores_with_weights_equal_ct_clip_scores(weights, volumes):
    real, fake = volumes
    res = volume_clip_scores(weights, index_rows(), real, fake, HU, batch_size=4)
    ct = res["ct_clip"]
    assert {ct[k]["status"] for k in ("t2i", "i2i", "zero_shot")} == {"ok"}
    assert {ct["real"][k]["status"] for k in ("t2i", "zero_shot")} == {"ok"}
    assert ct["n_volumes"] == 4 and ct["n_reports"] == 4
    texts = ct_clip_reports(index_rows())
    ckpt, tok = weights["ct_clip_pretrained_path"], weights["ct_clip_tokenizer_pretrained_path"]
    direct = ct_clip_scores(ckpt, tok, fake, texts, real=real, labels=labels_array(), batch_size=4)
    assert ct["t2i"]["value"] == pytest.approx(direct["t2i"]["value"], abs=1e-4)
    assert ct["i2i"]["value"] == pytest.approx(direct["i2i"]["value"], abs=1e-4)
    assert ct["zero_shot"]["auroc"] == pytest.approx(direct["zero_shot"]["auroc"])
    real_direct = ct_clip_scores(ckpt, tok, real, texts, labels=labels_array(), batch_size=4)
    assert ct["real"]["t2i"]["value"] == pytest.approx(real_direct["t2i"]["value"], abs=1e-4)
    assert ct["real"]["zero_shot"]["f1"] == pytest.approx(real_direct["zero_shot"]["f1"])
    assert res["pillar0"]["status"].startswith("unavailable: no Pillar-0 loader")

    # a volume without a report: T2I over the others, I2I / zero-shot over all
    table = index_rows()
    table.loc[3, ["prompt_report", "prompt_impression"]] = ""
    part = volume_clip_scores(weights, table, real, fake, HU, batch_size=4)["ct_clip"]
    assert part["n_reports"] == 3 and part["t2i"]["n"] == 3 and part["i2i"]["n"] == 4
    sub = ct_clip_scores(ckpt, tok, fake[:3], texts[:3], batch_size=4)
    assert part["t2i"]["value"] == pytest.approx(sub["t2i"]["value"], abs=1e-4)
    assert part["i2i"]["value"] == pytest.approx(ct["i2i"]["value"], abs=1e-6)

    # no reports, no labels: only I2I is measured; the data's reason whatever the weights
    bare = volume_clip_scores(weights, index_rows(reports=False, labels=False), real, fake, HU, batch_size=4)["ct_clip"]
    assert bare["i2i"]["status"] == "ok"
    for entry in (bare["t2i"], bare["real"]["t2i"]):
        assert entry["status"].startswith("not applicable: no reports in the training-set index")
        assert entry["value"] is None
    for entry in (bare["zero_shot"], bare["real"]["zero_shot"]):
        assert entry["status"].startswith("unavailable: the case table has no CT-RATE abnormality labels")
        assert entry["auroc"] is None

    # labels of one class only for every abnormality: no mean
    flat = index_rows(labels=False).assign(**{LABEL_PREFIX + n: "0" for n in CT_RATE_ABNORMALITIES})
    one = volume_clip_scores(weights, flat, real, fake, HU, batch_size=4)["ct_clip"]
    assert one["zero_shot"]["status"].startswith("not applicable: every abnormality has one class only")


def test_volume_clip_scores_without_weights_or_not_ct(volumes):
    real, fake = volumes
    cfg = {"ct_clip_pretrained_path": None, "ct_clip_tokenizer_pretrained_path": None}
    ct = volume_clip_scores(cfg, index_rows(), real, fake, HU)["ct_clip"]
    for entry in (ct["t2i"], ct["i2i"], ct["zero_shot"], ct["real"]["t2i"], ct["real"]["zero_shot"]):
        assert entry["status"].startswith("unavailable: metrics.ct_clip_pretrained_path is not set")
    no_tok = volume_clip_scores({"ct_clip_pretrained_path": "nowhere/CT-CLIP_v2.pt"}, index_rows(), real, fake,
                                HU)["ct_clip"]
    assert no_tok["i2i"]["status"].startswith("unavailable: metrics.ct_clip_pretrained_path = 'nowhere")
    mr = volume_clip_scores(cfg, index_rows(), real, fake, None)["ct_clip"]
    assert all(mr[k]["status"].startswith("not applicable: CT-CLIP embeds CT") for k in ("t2i", "i2i", "zero_shot"))
    with pytest.raises(ValueError, match="3 index rows"):
        volume_clip_scores(cfg, index_rows().iloc[:3], real, fake, HU)


def test_the_record_layout_with_tokenizer_key(weights, volumes, tmp_path):
    real, fake = volumes
    cfg = {**weights, "ct_clip_tokenizer_pretrained_path": str(tmp_path / "empty")}
    ct = volume_clip_scores(cfg, index_rows(), real, fake, HU, batch_size=4)["ct_clip"]
    assert ct["i2i"]["status"] == "ok"
    assert ct["t2i"]["status"].startswith("unavailable: metrics.ct_clip_tokenizer_pretrained_path = ")
    # a tokenizer of another vocabulary than the checkpoint's text side (41 tokens > 40 rows): I2I is still
    # measured, T2I and zero-shot say why instead of failing the whole record
    other = write_tokenizer(tmp_path / "other")
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                *(f"w{i}" for i in range(36))]) + "\n")
    res = volume_clip_scores({**weights, "ct_clip_tokenizer_pretrained_path": str(other)}, index_rows(), real, fake,
                             HU, batch_size=4)["ct_clip"]
    assert res["i2i"]["status"] == "ok" and res["i2i"]["value"] is not None
    for entry in (res["t2i"], res["zero_shot"], res["real"]["t2i"], res["real"]["zero_shot"]):
        assert entry["status"].startswith("unavailable: CT-CLIP's text encoder does not load with this tokenizer (")
        assert "41 tokens" in entry["status"]


# -- tables ------------------------------------------------------------------------------------------------

PAPER = "config/paper_reported"


def record(ok: bool = True) -> dict:
    zs = {"accuracy": 0.5, "precision": 0.25, "auroc": 0.625, "f1": 0.4, "n_scored": 2, "status": "ok"}
    gone = "unavailable: metrics.ct_clip_pretrained_path is not set (registry model ct_clip: ...)"
    if ok:
        ct = {"t2i": {"value": 12.5, "status": "ok"}, "i2i": {"value": 80.0, "status": "ok"}, "zero_shot": zs,
              "real": {"t2i": {"value": 15.0, "status": "ok"}, "zero_shot": {**zs, "auroc": 0.75}},
              "n_volumes": 4, "n_reports": 4}
    else:
        no_labels = {"status": "unavailable: the case table has no CT-RATE abnormality labels (columns ...)",
                     "auroc": None}
        ct = {"t2i": {"value": None, "status": "not applicable: no reports in the training-set index (columns x)"},
              "i2i": {"value": None, "status": gone}, "zero_shot": no_labels,
              "real": {"t2i": {"value": None, "status": gone}, "zero_shot": no_labels}, "n_volumes": 4, "n_reports": 0}
    return {"model": "volumes", "run": "dopri5-50", "n_real": 4, "n_generated": 4, "image_size": [24, 20, 16],
            "spatial_dims": 3, "clip_scores": {"ct_clip": ct, "pillar0": {"status": "unavailable: no Pillar-0 loader "
                                                                                   "in this version (x)"}}}


def test_table2_ours_beside_the_paper():
    t = medsyn2_table2(record(), PAPER)
    ours = t[t["from"] == "ours (volumes/dopri5-50)"].set_index("source")
    assert list(ours.index) == ["Real", "MedSyn2"]
    assert ours.loc["MedSyn2", "CT-CLIP T2I (%)"] == 12.5 and ours.loc["MedSyn2", "CT-CLIP I2I (%)"] == 80.0
    assert ours.loc["Real", "CT-CLIP T2I (%)"] == 15.0
    assert ours.loc["Real", "CT-CLIP I2I (%)"] == "not applicable: real volumes against themselves"
    assert ours.loc["MedSyn2", "Pillar-0 T2I (%)"] == "unavailable: no Pillar-0 loader in this version"
    assert "4 real vs 4 generated 24x20x16 volumes" in ours.loc["MedSyn2", "scale"]
    paper = t[t["from"] == "paper"].set_index("source")
    assert list(paper.index) == ["Real", "GenerateCT", "MedSyn", "Text2CT", "MedSyn2"]
    assert paper.loc["MedSyn2", "CT-CLIP T2I (%)"] == 14.74 and paper.loc["MedSyn2", "Pillar-0 I2I (%)"] == 46.79
    assert paper.loc["Real", "CT-CLIP I2I (%)"] == "not reported"

    bare = medsyn2_table2(record(ok=False), PAPER).set_index(["source", "from"])
    row = bare.loc[("MedSyn2", "ours (volumes/dopri5-50)")]
    assert row["CT-CLIP T2I (%)"] == "not applicable: no reports in the training-set index"
    assert row["CT-CLIP I2I (%)"] == "unavailable: metrics.ct_clip_pretrained_path is not set"
    old = {k: v for k, v in record().items() if k != "clip_scores"}  # a record written before clip_scores
    assert medsyn2_table2(old, PAPER).iloc[0]["CT-CLIP T2I (%)"].startswith("not measured: the volume metrics")


def test_table3_x100_and_the_cases_without_values():
    t = medsyn2_table3(record(), PAPER)
    ours = t[t["from"] != "paper"].set_index("source")
    assert ours.loc["MedSyn2", "accuracy (%)"] == 50.0 and ours.loc["MedSyn2", "AUROC (%)"] == 62.5
    assert ours.loc["Real", "AUROC (%)"] == 75.0 and ours.loc["MedSyn2", "F1 (%)"] == pytest.approx(40.0)
    assert "(2 of 18)" in ours.loc["MedSyn2", "scale"]
    paper = t[t["from"] == "paper"].set_index("source")
    assert paper.loc["Real", "AUROC (%)"] == 67.34 and paper.loc["MedSyn2", "F1 (%)"] == 48.4
    bare = medsyn2_table3(record(ok=False), PAPER)
    assert set(bare.loc[bare["from"] != "paper", "precision (%)"]) == {
        "unavailable: the case table has no CT-RATE abnormality labels"}


def test_tables_of_a_study_without_volumes(tmp_path):
    for build, columns in ((medsyn2_table2, 4), (medsyn2_table3, 4)):
        t = build(None, PAPER)
        ours = t[t["from"] == "ours"]
        assert list(ours["source"]) == ["Real", "MedSyn2"]
        assert set(ours.iloc[:, 2:2 + columns].to_numpy().ravel()) == {NO_VOLUMES}
        assert (t["from"] == "paper").sum() == 5
        assert len(build(None, tmp_path)) == 2  # no paper file: our rows only


def test_tables_are_registered_and_build_from_files(tmp_path):
    import json

    from medsynth.tables.registry import TABLES, build_table

    assert {"medsyn2_table2", "medsyn2_table3"} <= set(TABLES)
    path = tmp_path / "dopri5-50.json"
    path.write_text(json.dumps(record()))
    t = build_table("medsyn2_table2", {"volumes": str(path)}, {"paper_dir": PAPER})
    assert t.iloc[1]["CT-CLIP I2I (%)"] == 80.0
    t3 = build_table("medsyn2_table3", {}, {"paper_dir": PAPER})
    assert t3.iloc[0]["AUROC (%)"] == NO_VOLUMES


# -- labels_csv: CT-RATE's abnormality labels reach the case table and the manifest ----------------------------

def test_labels_csv_reaches_the_case_table_and_the_manifest(tmp_path):
    import nibabel as nib

    from medsynth.data.discover import discover_cases
    from medsynth.data.manifest import build_manifest
    from medsynth.data.registry import load_registry, resolve_datasets

    root = tmp_path / "ct_rate"
    names = ["train_1_a_1", "train_2_a_1", "valid_1_a_1"]
    for name in names:
        split = name.split("_")[0]
        folder = root / "dataset" / split / "_".join(name.split("_")[:2]) / "_".join(name.split("_")[:3])
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(folder / f"{name}.nii.gz"))
    reports = root / "dataset" / "radiology_text_reports"
    reports.mkdir(parents=True)
    for part, rows in (("train_reports", names[:2]), ("validation_reports", names[2:])):
        (reports / f"{part}.csv").write_text("VolumeName,Findings_EN,Impressions_EN\n" + "".join(
            f"{n}.nii.gz,Findings {n}.,Impression {n}.\n" for n in rows))
    labels = root / "dataset" / "multi_abnormality_labels"
    labels.mkdir(parents=True)
    header = "VolumeName," + ",".join(CT_RATE_ABNORMALITIES) + "\n"
    (labels / "train_predicted_labels.csv").write_text(
        header + f"{names[0]}.nii.gz," + ",".join(["1"] + ["0"] * 17) + "\n")  # train_2 has no row
    (labels / "valid_predicted_labels.csv").write_text(
        header + f"{names[2]}.nii.gz," + ",".join(["0"] * 9 + ["1"] + ["0"] * 8) + "\n")
    (entry,) = resolve_datasets(["ct_rate"], load_registry("config/datasets.yaml")).values()
    assert "dataset/multi_abnormality_labels/*" in entry["include"]
    table = discover_cases(entry, root).set_index("case_id")
    cols = [LABEL_PREFIX + n for n in CT_RATE_ABNORMALITIES]
    assert set(cols) <= set(table.columns)
    assert table.loc["ct_rate_train_1_a_1", LABEL_PREFIX + "Medical material"] == "1"
    assert table.loc["ct_rate_valid_1_a_1", LABEL_PREFIX + "Lung nodule"] == "1"
    assert table.loc["ct_rate_train_2_a_1", LABEL_PREFIX + "Lung nodule"] == ""  # no row: no label
    assert table.loc["ct_rate_valid_1_a_1", "prompt_report"] == "Findings valid_1_a_1."
    shard = table.reset_index().assign(status="ok", reason="", source_sha256="", path="", sha256="", label_path="",
                                       shape="", spacing="")
    manifest, _ = build_manifest([shard], {"fractions": {"train": 1.0, "test": 0.0}}, 0)
    assert set(cols) <= set(manifest.columns)
    np.testing.assert_array_equal(abnormality_labels(manifest[manifest["case_id"] != "ct_rate_train_2_a_1"]),
                                  np.array([[1] + [0] * 17, [0] * 9 + [1] + [0] * 8]))
    assert abnormality_labels(manifest).startswith("unavailable: some volumes have no abnormality labels")
