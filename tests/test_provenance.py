"""Provenance sidecars and `medsynth audit`: lineage to raw data, stale inputs, no secrets."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from workflow import embedded_config, micro_generative_config, run_snakemake, run_snakemake_side_by_side

from medsynth.provenance import audit, scrub, sidecar_of

TARGETS = ("results/example/manifest.csv", "results/example/qc/ingest_quarantine.csv")


def _audit_cli(workdir, target):
    return subprocess.run([sys.executable, "-m", "medsynth.cli", "audit", target], cwd=workdir, capture_output=True,
                          text=True)


def test_audit_walks_back_to_raw_data_and_detects_changed_inputs(tmp_path, monkeypatch):
    secret = "hf_SECRET_token_value_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    run_snakemake(tmp_path, embedded_config(), *TARGETS)
    manifest = "results/example/manifest.csv"
    record = json.loads(sidecar_of(tmp_path / manifest).read_text())
    assert record["rule"] == "manifest" and record["seed"] == embedded_config()["seed"]
    assert {"commit", "dirty", "sha256"} <= set(record["code"]) and "torch" in record["packages"]
    ok = _audit_cli(tmp_path, manifest)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[download]" in ok.stdout and "raw files verified" in ok.stdout
    # no sidecar, log or output holds the token
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log", ".csv"):
            assert secret not in path.read_text(errors="ignore"), path
    # an input changed after the manifest was made: the manifest is stale
    sources = tmp_path / "results" / "example" / "sources.csv"
    sources.write_text(sources.read_text().replace("portal venous", "arterial"))
    stale = _audit_cli(tmp_path, manifest)
    assert stale.returncode != 0
    assert "sources.csv" in stale.stderr and "changed" in stale.stderr


def test_untraceable_and_missing_files(tmp_path):
    lonely = tmp_path / "table.csv"
    lonely.write_text("a,b\n1,2\n")
    node = audit(lonely)
    assert node.all_problems() == [f"{lonely}: untraceable: no provenance sidecar"]
    assert audit(tmp_path / "absent.csv").problems == ["missing"]


def test_scrub_removes_secrets_at_any_depth():
    cleaned = scrub({"entry": {"auth": {"env": "HF_TOKEN"}, "api_key": "k", "password": "p"}, "seed": 1})
    assert cleaned["entry"]["api_key"] == "<redacted>" and cleaned["entry"]["password"] == "<redacted>"
    assert cleaned["seed"] == 1


@pytest.mark.slow
def test_two_runs_give_byte_identical_tables(tmp_path):
    """Seeds everywhere: two runs of a micro study in two folders write the same data stage byte for byte
    (cases, registered volumes, masks, training shards) and the same table bytes down to the paper tables
    (the measured `seconds` columns aside)."""
    target = "results/example/tables/victr_table2.csv"
    run_snakemake_side_by_side([tmp_path / "a", tmp_path / "b"], micro_generative_config(), target)
    data_stage = [_digests(tmp_path / run, ("ingest", "registered", "masks", "trainsets", "templates")) for run in "ab"]
    assert data_stage[0] == data_stage[1]
    assert any(k.endswith(".nii.gz") for k in data_stage[0]) and "manifest.csv" in data_stage[0]
    tables = [pd.read_csv(tmp_path / run / target) for run in ("a", "b")]
    timing = [c for c in tables[0].columns if "seconds" in c]
    assert timing == ["seconds per sample", "paper seconds"]
    pd.testing.assert_frame_equal(tables[0].drop(columns=timing), tables[1].drop(columns=timing))
    for rel in ("results/example/metrics/victr/euler-3.json", "results/example/downstream/real/evaluation.json"):
        docs = [json.loads((tmp_path / run / rel).read_text()) for run in ("a", "b")]
        for doc in docs:
            doc.pop("seconds_per_step", None)
            for key in ("seconds", "seconds_per_sample"):
                doc.get("sampling", {}).pop(key, None)
            doc.get("estimates", {}).pop("seconds_per_sample", None)  # the wall time, as a claims-table point
        assert docs[0] == docs[1], rel
    for rel in ("results/example/stage2/victr/final/adapter_model.safetensors",
                "results/example/samples/victr/euler-3/eval.safetensors"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    ok = _audit_cli(tmp_path / "a", target)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def _digests(root, folders) -> dict[str, str]:
    """sha256 of the manifest and every file under ``folders`` of a run's results (logs and sidecars aside)."""
    import hashlib

    base = root / "results" / "example"
    files = [base / "manifest.csv", *(p for f in folders for p in sorted((base / f).rglob("*")))]
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.is_file() and "logs" not in p.parts and not p.name.endswith(".prov.json")}
