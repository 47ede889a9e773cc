"""Patient-level, seeded splits and the manifest/quarantine tables."""

from __future__ import annotations

import pandas as pd

from medsynth.data.manifest import MANIFEST_COLUMNS, assign_splits, build_manifest, shard_ids, shard_of


def test_splits_are_deterministic_and_follow_fractions():
    patients = [f"p{i:03d}" for i in range(200)]
    a = assign_splits(patients, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=7)
    b = assign_splits(list(reversed(patients)), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=7)
    assert a == b
    counts = pd.Series(a).value_counts().to_dict()
    assert counts == {"train": 160, "val": 20, "test": 20}
    c = assign_splits(patients, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=8)
    assert c != a


def test_fixed_patients_keep_their_split():
    got = assign_splits(["a", "b", "c", "d"], {"train": 1.0, "test": 0.0}, seed=1, fixed={"c": "test"})
    assert got == {"a": "train", "b": "train", "c": "test", "d": "train"}


def _shard(rows):
    base = {k: "" for k in MANIFEST_COLUMNS}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_cases_of_one_patient_share_a_split_and_quarantine_is_separate():
    rows = []
    for p in range(30):
        for k in range(3):
            rows.append({"case_id": f"c{p}_{k}", "patient_id": f"p{p}", "status": "ok", "reason": ""})
    rows.append({"case_id": "bad", "patient_id": "px", "status": "quarantined", "reason": "empty image: every voxel is 0"})
    manifest, quarantine = build_manifest([_shard(rows[:50]), _shard(rows[50:])], {"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}}, seed=3)
    assert len(manifest) == 90 and list(quarantine["case_id"]) == ["bad"]
    assert quarantine.loc[0, "reason"].startswith("empty image") and quarantine.loc[0, "stage"] == "ingest"
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"}


def test_dataset_split_and_case_level_fixed_split_win():
    rows = [{"case_id": "a1", "patient_id": "A", "status": "ok", "split": "test"},
            {"case_id": "b1", "patient_id": "B", "status": "ok", "split": ""},
            {"case_id": "c1", "patient_id": "C", "status": "ok", "split": ""}]
    manifest, _ = build_manifest([_shard(rows)], {"fractions": {"train": 1.0}, "fixed": {"c1": "val"}}, seed=0)
    assert manifest.set_index("case_id")["split"].to_dict() == {"a1": "test", "b1": "train", "c1": "val"}


def test_shards_cover_all_cases_once():
    sources = pd.DataFrame({"case_id": [f"c{i:02d}" for i in range(19)]})
    ids = shard_ids(len(sources), 8)
    assert ids == ["000", "001", "002"]
    got = pd.concat([shard_of(sources, s, 8) for s in ids])["case_id"].tolist()
    assert got == sources["case_id"].tolist()
    assert shard_ids(0, 8) == ["000"]
