"""The reader-study kit drawn per pathology (MedSyn2 Supp. Table 8) and its per-pathology match counts.

A small training-set shard and generated set with three condition channels (``lung`` on every slice,
``effusion`` on even slices, ``nodule`` on every third) written in tmp with the package's own writers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsynth.io.generated import write_generated
from medsynth.io.trainsets import write_shard
from medsynth.preprocess.intensity import hu_to_unit
from medsynth.readers.draw import draw_by_pathology, draw_cases
from medsynth.readers.kit import KEY_COLUMNS, build_kit
from medsynth.readers.scores import NO_ANSWERS, NOT_BY_PATHOLOGY, score_answers

NAMES = ["lung", "effusion", "nodule"]
MODEL, RUN = "medsyn2-kit-test", "dopri5-5"
INTENSITY = {"ct_hu_range": [-1024, 1024], "windows": {"lung": [-600, 1500]}}
PAPER = Path(__file__).resolve().parents[1] / "config" / "paper_reported"
#: sha256 of key.csv built by the code before readers.pathologies existed (commit 0373fb48), same study and config
UNSTRATIFIED_KEY_SHA256 = "86f4ce5bf857fee95720891720a0912be2cd11d5910b0cc5173e8bb2d3c8b06c"


def _make_study(root: Path, size: int = 16, n_slices: int = 10) -> dict:
    """A slice shard of three test patients and a generated set conditioned on every slice."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.42 * size) ** 2
    blob = (yy - 0.5 * size) ** 2 + (xx - 0.4 * size) ** 2 < (0.15 * size) ** 2
    samples, rows, generated, masks = [], [], [], []
    for case in ("patient-a", "patient-b", "patient-c"):
        for z in range(n_slices):
            msk = np.stack([body, blob & (z % 2 == 0), blob & (z % 3 == 0)]).astype(np.uint8)
            image = hu_to_unit(np.where(body, 40.0, -1000.0) + rng.normal(0, 15, (size, size)))[None]
            present = [n for n, m in zip(NAMES, msk) if m.any()]
            samples.append(({"case_id": case, "patient_id": case, "dataset": "t", "modality": "CT", "split": "test",
                             "normalisation": "{}", "prompt_contrast": "non-contrast", "prompt_region": "chest",
                             "slice": z, "organs": json.dumps(present)}, image, msk))
            rows.append({"case_id": case, "patient_id": case, "modality": "CT", "split": "test", "slice": z,
                         "organs": json.dumps(present), "prompt": f"CT chest; {' and '.join(present)}"})
            generated.append(np.clip(image + rng.normal(0, 0.05, image.shape), -1, 1).astype(np.float32))
            masks.append(msk)
    shards = root / "trainsets"
    shards.mkdir(parents=True)
    write_shard(samples, NAMES, shards / "shard-000.safetensors", shards / "shard-000.csv")
    write_generated(root / "eval.safetensors", np.stack(generated), np.stack(masks), NAMES, RUN)
    pd.DataFrame(rows).assign(sample=range(len(rows))).to_csv(root / "eval.csv", index=False)
    return {"shards": [str(shards / "shard-000.safetensors"), str(shards / "shard-000.csv")],
            "generated": str(root / "eval.safetensors"), "index": str(root / "eval.csv"), "masks": np.stack(masks)}


def _build(study: dict, out: Path, **readers) -> pd.DataFrame:
    cfg = {"real": 3, "synthetic": 3, "seed": 11, **readers}
    return build_kit(study["shards"], study["generated"], study["index"], cfg, INTENSITY, MODEL, RUN,
                     out / "kit", out / "key.csv")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    return _make_study(tmp_path_factory.mktemp("study"))


# -- the draw -----------------------------------------------------------------------------------------------
def test_the_stratified_draw_counts_per_pathology_and_never_reuses_a_case():
    rng = np.random.default_rng(5)
    masks = (rng.random((300, 4, 3, 3)) > 0.9).astype(np.uint8)  # rows often qualify for several channels
    channels = {"ggo": 1, "nodule": 3, "consolidation": 0}
    draw = draw_by_pathology(masks, channels, 15, 15, seed=2)
    assert len(draw) == 90 and draw["sample"].is_unique
    counts = draw.groupby(["pathology", "truth"]).size()
    assert set(counts.index) == {(p, t) for p in channels for t in ("real", "synthetic")} and set(counts) == {15}
    for _, case in draw.iterrows():  # each case has its pathology in the mask
        assert masks[case["sample"], channels[case["pathology"]]].any()
    assert list(draw["case_id"]) == [f"case-{k:03d}" for k in range(1, 91)]
    assert list(draw["pathology"]) != sorted(draw["pathology"])  # shuffled across the strata
    pd.testing.assert_frame_equal(draw, draw_by_pathology(masks, channels, 15, 15, seed=2))
    assert list(draw_by_pathology(masks, channels, 15, 15, seed=3)["sample"]) != list(draw["sample"])


def test_a_thin_stratum_is_scaled_down_and_logged(caplog):
    masks = np.zeros((12, 2, 2, 2), np.uint8)
    masks[:, 0, 0, 0] = 1  # channel 0 on every row
    masks[[2, 5, 9], 1, 1, 1] = 1  # channel 1 on three rows, which also have channel 0
    with caplog.at_level(logging.WARNING, logger="medsynth.readers.draw"):
        draw = draw_by_pathology(masks, {"common": 0, "rare": 1}, 2, 2, seed=0)
    rare = draw[draw["pathology"] == "rare"]
    assert sorted(rare["truth"]) == ["real", "real", "synthetic"] and set(rare["sample"]) == {2, 5, 9}
    assert (draw["pathology"] == "common").sum() == 4 and draw["sample"].is_unique  # the rare rows drawn first
    assert "pathology rare: only 3 conditions" in caplog.text
    with pytest.raises(ValueError, match="no condition"):
        draw_by_pathology(np.zeros((3, 2, 2, 2)), {"rare": 1}, 1, 1, seed=0)


# -- the kit ------------------------------------------------------------------------------------------------
def test_the_kit_per_pathology_keys_each_case_to_its_pathology(study, tmp_path):
    key = _build(study, tmp_path / "a", pathologies=["nodule", "effusion"])
    written = pd.read_csv(tmp_path / "a" / "key.csv", dtype=str, keep_default_na=False)
    assert list(written.columns) == ["kit_id", "case_id", "truth", "pathology", *KEY_COLUMNS[3:]]
    assert set(key.groupby(["pathology", "truth"]).size()) == {3} and len(key) == 12
    assert key["sample"].is_unique
    channel = {"effusion": 1, "nodule": 2}
    assert all(study["masks"][s, channel[p]].any() for s, p in zip(key["sample"], key["pathology"]))
    kit_texts = (tmp_path / "a" / "kit" / "index.html").read_text() + (tmp_path / "a" / "kit" / "cases.csv").read_text()
    assert "pathology" not in kit_texts  # the key stays apart: readers are not told the stratum
    _build(study, tmp_path / "b", pathologies=["nodule", "effusion"])
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # the same seed gives the same kit and key
    with pytest.raises(ValueError, match=r"readers.pathologies \['ggo'\] are not condition channels"):
        _build(study, tmp_path / "c", pathologies=["ggo"])


def test_no_pathologies_leaves_the_kit_and_key_as_before(study, tmp_path):
    key = _build(study, tmp_path / "a")
    _build(study, tmp_path / "b", pathologies=[])
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert list(pd.read_csv(tmp_path / "a" / "key.csv").columns) == list(KEY_COLUMNS)
    draw = draw_cases(study["masks"], 3, 3, seed=11)
    assert list(key["case_id"]) == list(draw["case_id"]) and list(key["sample"]) == list(draw["sample"])
    assert hashlib.sha256((tmp_path / "a" / "key.csv").read_bytes()).hexdigest() == UNSTRATIFIED_KEY_SHA256


# -- scoring ------------------------------------------------------------------------------------------------
def _key(path: Path, pathology: bool = True) -> Path:
    key = pd.DataFrame({"kit_id": "kit1", "case_id": [f"c{i}" for i in range(1, 9)],
                        "truth": ["real", "real", "synthetic", "synthetic"] * 2,
                        "pathology": ["ggo"] * 4 + ["nodule"] * 4})
    (key if pathology else key.drop(columns="pathology")).to_csv(path, index=False)
    return path


def _answers(path: Path, reader: str, match: str) -> Path:
    words = {"m": "match", "p": "partial match", "n": "not match", "-": ""}
    pd.DataFrame({"reader_id": reader, "case_id": [f"c{i}" for i in range(1, 9)], "turing": ["real", "synthetic"] * 4,
                  "match": [words[m] for m in match.split()]}).to_csv(path, index=False)
    return path


def _outputs(folder: Path) -> dict[str, tuple[str, str]]:
    return {"match_by_pathology": (str(folder / "by.csv"), str(folder / "by.md"))}


def test_match_by_pathology_counts_by_hand(tmp_path):
    # c1 c2 real ggo, c3 c4 synthetic ggo, c5 c6 real nodule, c7 c8 synthetic nodule
    files = [_answers(tmp_path / "a.csv", "A", "m p n n m m p -"), _answers(tmp_path / "b.csv", "B", "m m m p n n n n")]
    score_answers(files, _key(tmp_path / "key.csv"), _outputs(tmp_path))
    table = pd.read_csv(tmp_path / "by.csv")
    assert list(table.columns) == ["reader", "data", "pathology", "match", "partial_match", "not_match"]
    rows = {tuple(r[:3]): list(r[3:]) for r in table.itertuples(index=False)}
    assert rows == {("A", "real", "ggo"): [1, 1, 0], ("A", "real", "nodule"): [2, 0, 0],
                    ("A", "synthetic", "ggo"): [0, 0, 2], ("A", "synthetic", "nodule"): [0, 1, 0],
                    ("B", "real", "ggo"): [2, 0, 0], ("B", "real", "nodule"): [0, 0, 2],
                    ("B", "synthetic", "ggo"): [1, 1, 0], ("B", "synthetic", "nodule"): [0, 0, 2]}
    assert list(table["reader"]) == ["A"] * 4 + ["B"] * 4 and "Table 8" in (tmp_path / "by.md").read_text()


def test_match_by_pathology_says_why_it_is_empty(tmp_path):
    score_answers([], _key(tmp_path / "key.csv"), _outputs(tmp_path), answers_folder="results/x/readers/answers")
    assert NO_ANSWERS in (tmp_path / "by.csv").read_text() and NO_ANSWERS in (tmp_path / "by.md").read_text()
    files = [_answers(tmp_path / "a.csv", "A", "m m m m m m m m")]
    score_answers(files, _key(tmp_path / "plain.csv", pathology=False), _outputs(tmp_path))
    for written in ("by.csv", "by.md"):
        assert NOT_BY_PATHOLOGY in (tmp_path / written).read_text()


def test_the_papers_table8_sums_to_its_table4():
    table8 = pd.read_csv(PAPER / "medsyn2_table8.csv")
    table4 = pd.read_csv(PAPER / "medsyn2_table4.csv").set_index(["reader", "data"]).sort_index()
    counts = ["match", "partial_match", "not_match"]
    assert set(table8["pathology"]) == {"consolidation", "ggo", "nodule", "pericardial_effusion", "pleural_effusion"}
    assert (table8[counts].sum(axis=1) == 15).all()  # 15 pairs per abnormality, reader and kind of data
    pd.testing.assert_frame_equal(table8.groupby(["reader", "data"])[counts].sum().sort_index(), table4[counts])
