"""The workflow through SLURM (profiles/slurm + snakemake-executor-plugin-slurm) on a one-node test cluster.

tests/slurm/slurm_localhost.sh installs Debian's slurm packages if missing and starts slurmctld,
slurmd and munge on this machine (partitions `cpu` and `gpu`, one fake GPU), so this test needs
root and apt; it is skipped otherwise, or with MEDSYNTH_SKIP_SLURM=1. The data stage of the
embedded study runs through `snakemake --profile profiles/slurm` and must give byte-identical
outputs to a local run; then the manifest rule, given `gpu: 1` by a study-config override, must be
submitted to the `gpu` partition with a GPU request; training rules (the VAE, the downstream extractor) and a
metrics rule (calibration) run through the profile too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import path_without_stubs
from workflow import REPO, embedded_config, run_snakemake

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPT = REPO / "tests" / "slurm" / "slurm_localhost.sh"
PROFILE = REPO / "profiles" / "slurm" / "config.v8+.yaml"
TARGETS = ("results/example/manifest.csv", "results/example/qc/ingest_quarantine.csv")
DATA_RULES = {"download", "discover_cases", "ingest", "manifest"}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _skip(reason: str):
    print(f"\nSKIP test_slurm: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node SLURM cluster, the real ``scontrol`` on PATH (conftest stubs it for the other
    tests); stopped afterwards unless it was already running."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", path_without_stubs())
        yield from _running_cluster()


def _running_cluster():
    if os.environ.get("MEDSYNTH_SKIP_SLURM") == "1":
        _skip("MEDSYNTH_SKIP_SLURM=1")
    if os.name != "posix" or os.geteuid() != 0:
        _skip("needs root (installs slurm packages and starts its daemons)")
    if not shutil.which("sinfo") and not shutil.which("apt-get"):
        _skip("slurm is not installed and apt-get is not available to install it")
    was_running = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    t0 = time.monotonic()
    try:
        start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        _skip("starting the test cluster timed out (apt-get install or daemons)")
    if start.returncode != 0:
        _skip(f"could not start the test cluster: {start.stderr.strip()[-1500:]}")
    print(f"\nslurm test cluster up in {time.monotonic() - t0:.0f} s:\n{start.stdout}")
    yield
    if not was_running:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True)


def _test_profile(folder: Path) -> Path:
    """profiles/slurm with the changes this offline one-node test cluster needs.

    - software-deployment-method conda is dropped: creating the rules' conda envs needs the
      internet (and conda), which tests do not have; the jobs run in the test's own Python
      environment instead (sbatch --export=ALL passes PATH/VIRTUAL_ENV on to the jobs).
    - no account: the test cluster runs without accounting (`--slurm-no-account`).
    - status checks every 2 s instead of 20 s, so that the test's short jobs finish sooner.
    Everything else (executor, status command, kept logs, latency wait, ...) is the real profile.
    """
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm" and profile["software-deployment-method"] == "conda"
    profile.pop("software-deployment-method")
    profile.pop("conda-prefix", None)
    profile.update({"slurm-no-account": True, "slurm-init-seconds-before-status-checks": 2,
                    "seconds-between-status-checks": 2})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.v8+.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _run_slurm(workdir: Path, profile: Path, config: dict, *targets: str, extra: tuple[str, ...] = ()):
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_") and not k.startswith("SLURM_")}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config_file), "--profile", str(profile), *extra, *targets]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    out = proc.stdout + proc.stderr
    print(f"snakemake --profile slurm {' '.join(targets)}: {time.monotonic() - t0:.0f} s, rc {proc.returncode}")
    assert proc.returncode == 0, out[-8000:]
    return out


def _tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest); provenance sidecars
    (``*.prov.json``: run times, code commit) are only listed, their content differs by design."""
    def digest(p: Path) -> str:
        return "" if p.name.endswith(".prov.json") else hashlib.sha256(p.read_bytes()).hexdigest()
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _squeue(jobids) -> dict[str, tuple[str, str]]:
    """SLURM job id -> (state, partition), from slurmctld's memory of recent jobs (MinJobAge)."""
    proc = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T|%P", "-j", ",".join(jobids)],
                          capture_output=True, text=True, check=True)
    return {i: (s, p) for i, s, p in (line.split("|") for line in proc.stdout.split())}


def test_data_stage_through_slurm_equals_local_run_and_gpu_rule_requests_a_gpu(slurm_cluster, tmp_path):
    profile = _test_profile(tmp_path / "profile")
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"

    out = _run_slurm(slurm_dir, profile, embedded_config(), *TARGETS)
    # every job of the data stage went through sbatch ...
    submitted = SUBMITTED.findall(out)
    logs = {Path(log).parent.relative_to(slurm_dir / ".snakemake" / "slurm_logs").parts[0] for _, _, log in submitted}
    assert logs == {f"rule_{r}" for r in DATA_RULES}, out[-4000:]
    # ... ran on the cluster (squeue remembers finished jobs for MinJobAge seconds) ...
    jobids = [jobid for _, jobid, _ in submitted]
    states = _squeue(jobids)
    assert {states[j][0] for j in jobids} == {"COMPLETED"}, states
    assert {states[j][1] for j in jobids} == {"cpu"}, states
    # ... and left its SLURM log (profile: slurm-keep-successful-logs), which shows the job's snakemake
    for _, jobid, log in submitted:
        text = Path(log).read_text()
        assert Path(log).name == f"{jobid}.log" and "--executor slurm-jobstep" in text and "Finished jobid" in text

    # the outputs are those of a local run, byte for byte
    run_snakemake(local_dir, embedded_config(), *TARGETS)
    for rel in (*TARGETS, "results/example/sources.csv", "results/example/raw/example/inventory.csv"):
        assert (slurm_dir / rel).read_bytes() == (local_dir / rel).read_bytes(), rel
    ingest_slurm = _tree_digest(slurm_dir / "results/example/ingest")  # NIfTI images/labels, cases.csv
    ingest_local = _tree_digest(local_dir / "results/example/ingest")
    assert ingest_slurm == ingest_local
    assert sum(k.endswith(".nii.gz") for k in ingest_slurm) >= 6
    assert any(k.endswith("cases.csv") for k in ingest_slurm)

    # a rule whose resources ask for a GPU is submitted with a GPU request to the GPU partition
    config = embedded_config(resources={"default": {"mem_mb": 2000, "runtime": 60},
                                        "manifest": {"gpu": 1, "slurm_partition": "gpu"}})
    manifest_before = (slurm_dir / TARGETS[0]).read_bytes()
    out = _run_slurm(slurm_dir, profile, config, *TARGETS, extra=("--forcerun", "manifest", "--verbose"))
    calls = re.findall(r"sbatch call: (.*)", out)
    assert len(calls) == 1 and "rule_manifest" in calls[0], calls
    assert " --gpus=1" in calls[0] and " -p gpu" in calls[0], calls[0]
    [(_, jobid, _)] = SUBMITTED.findall(out)
    assert _squeue([jobid])[jobid] == ("COMPLETED", "gpu")
    job = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True, check=True).stdout
    assert re.search(r"TresPerJob=\S*gpu:1", job), job
    assert (slurm_dir / TARGETS[0]).read_bytes() == manifest_before


def test_jobs_of_one_rule_go_out_as_a_job_array(slurm_cluster, tmp_path):
    """`--slurm-array-jobs <rule>` (how an ablation sweep or per-shard work is submitted, docs/cluster.md):
    the ingest shards of a shard_size-1 study (one per case) go out as one SLURM job array."""
    profile = _test_profile(tmp_path / "profile")
    out = _run_slurm(tmp_path / "array", profile, embedded_config(shard_size=1), "results/example/manifest.csv",
                     extra=("--slurm-array-jobs", "ingest", "--verbose"))
    arrays = re.findall(r"Submitted array job with Snakemake IDs (\S+) and SLURM job ID (\d+)\. "
                        r"The individual task IDs are 1-(\d+)", out)
    cases = pd.read_csv(tmp_path / "array" / "results" / "example" / "manifest.csv")
    assert len(arrays) == 1 and int(arrays[0][2]) == len(cases) > 1, out[-4000:]
    jobid = arrays[0][1]
    tasks = [f"{jobid}_{i}" for i in range(1, len(cases) + 1)]
    assert {state for state, _ in _squeue(tasks).values()} == {"COMPLETED"}
    shards = [p for p in (tmp_path / "array" / "results" / "example" / "ingest").glob("shard-*") if p.is_dir()]
    assert len(shards) == len(cases)


def _small_study() -> dict:
    """The embedded study on a coarse grid (6 mm, 32-pixel slices, patient-level test split) with a few training
    steps: the same rules and code paths, cheap enough to run through the test cluster."""
    config = embedded_config()
    config["preprocess"] = {**config["preprocess"], "grid": {"spacing_mm": [6.0, 6.0, 6.0], "size": [64, 56, 56]}}
    config["trainsets"] = {**config["trainsets"], "slices": {**config["trainsets"]["slices"], "size": 32, "slabs": {}},
                           "volume_size": [32, 32, 32]}
    config["vae"] = {**config["vae"], "steps": 12, "checkpoint_every": 0,
                     "model": {**config["vae"]["model"], "sample_size": 32}}
    config["downstream"] = {**config["downstream"], "steps": 12, "checkpoint_every": 0}
    return config


def test_a_training_rule_and_a_metrics_rule_run_through_slurm(slurm_cluster, tmp_path):
    """Issue 13 item 4: the VAE and the downstream extractor (training rules) and the calibration table's
    metrics (a metrics rule) are submitted through the profile and give their outputs."""
    profile = _test_profile(tmp_path / "profile")
    work = tmp_path / "train"
    targets = ("results/example/vae/final", "results/example/metrics/calibration.json")
    # the data stage runs here first (its jobs through SLURM: test_data_stage_through_slurm...), so only the
    # training and metrics jobs go to the cluster
    run_snakemake(work, _small_study(), "results/example/trainsets/slices/shard-000.safetensors")  # one shard
    assert not (work / "results/example/vae").exists()
    out = _run_slurm(work, profile, _small_study(), *targets)
    submitted = SUBMITTED.findall(out)
    rules = {Path(log).parent.relative_to(work / ".snakemake" / "slurm_logs").parts[0] for _, _, log in submitted}
    assert {"rule_vae", "rule_downstream", "rule_calibration"} <= rules, sorted(rules)
    assert not rules & {"rule_ingest", "rule_register", "rule_masks", "rule_training_sets"}, sorted(rules)
    states = _squeue([jobid for _, jobid, _ in submitted])
    assert {state for state, _ in states.values()} == {"COMPLETED"}, states
    assert (work / "results/example/vae/final").is_dir()
    calibration = json.loads((work / "results/example/metrics/calibration.json").read_text())
    rows = {row["name"]: row for row in calibration["rows"]}
    assert np.isfinite(rows["VAE reconstruction"]["fd_self"]) and rows["uniform_noise"]["fd_self"] > 0
