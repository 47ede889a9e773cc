"""Real-world folders of scans through the workflow: bad cases are quarantined, the rest of the study goes on."""

from __future__ import annotations

import shutil

import pandas as pd
from workflow import embedded_config, run_snakemake

from medsynth.cases import read_shard_table


def _local_study(root, **overrides) -> dict:
    config = embedded_config(study="mine", datasets=[{"name": "mine", "kind": "local", "root": str(root)}],
                             splits={"fractions": {"train": 1.0}}, **overrides)
    config["volumes"] = {**config["volumes"], "enabled": False}
    return config


def test_a_shard_whose_cases_all_fail_leaves_valid_tables_and_the_study_goes_on(tmp_path, example_dir):
    root = tmp_path / "scans"
    root.mkdir()
    shutil.copy(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", root / "a_good.nii.gz")
    shutil.copy(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", root / "b_good.nii.gz")
    (root / "z_truncated.nii.gz").write_bytes(b"\x1f\x8b truncated")
    (root / "z_zero_bytes.nii.gz").write_bytes(b"")
    config = _local_study(root, shard_size=2)  # shard 000: the two good scans; shard 001: the two broken files
    results = tmp_path / "results" / "mine"
    run_snakemake(tmp_path, config, "results/mine/qc/quarantine.csv",
                  *(f"results/mine/trainsets/slices/shard-{s}.csv" for s in ("000", "001")))
    assert set(read_shard_table(results / "ingest" / "shard-001")["status"]) == {"quarantined"}
    for stage in ("registered", "masks"):  # no case reached them: still a CSV with its header
        empty = read_shard_table(results / stage / "shard-001")
        assert empty.empty and {"case_id", "status", "reason"} <= set(empty.columns), stage
    quarantine = pd.read_csv(results / "qc" / "quarantine.csv", dtype=str, keep_default_na=False).set_index("case_id")
    assert sorted(quarantine.index) == ["mine_z_truncated", "mine_z_zero_bytes"]
    assert set(quarantine["stage"]) == {"ingest"}
    assert all(reason.startswith("unreadable") for reason in quarantine["reason"])
    masks = read_shard_table(results / "masks" / "shard-000")
    assert sorted(masks.loc[masks["status"] == "ok", "case_id"]) == ["mine_a_good", "mine_b_good"]
    slices = pd.read_csv(results / "trainsets" / "slices" / "shard-000.csv")
    assert set(slices["case_id"]) == {"mine_a_good", "mine_b_good"}
    assert pd.read_csv(results / "trainsets" / "slices" / "shard-001.csv").empty
