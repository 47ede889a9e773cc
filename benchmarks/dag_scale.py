"""How the DAG scales: dry-run time and job count of a CT-RATE-sized study, and the no-op rerun time.

A study of 25,692 cases (CT-RATE's size) is laid out without data: the dataset's inventory and the
case table (``sources.csv``, the checkpoint the shard count comes from) are generated, so Snakemake
plans the whole study. Then the embedded study is run once (if needed) and rerun with nothing to
do. On a machine with a SLURM client whose controller does not answer, every time is also measured
with ``scontrol`` failing at once (see ``main``). Usage:
``python benchmarks/dag_scale.py [--cases 25692] [--shard-sizes 8 32 64]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, config: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    """Run snakemake from ``workdir`` with the repository's Snakefile; return (seconds, output)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def large_study(workdir: Path, cases: int, shard_size: int) -> Path:
    """Config + generated inventory and sources table of a ``cases``-case study with no data."""
    root = workdir / "ct_rate_like"
    root.mkdir(parents=True, exist_ok=True)
    study = f"scale_{shard_size}"
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(study=study, shard_size=shard_size, registry=str(REPO / "config" / "datasets.yaml"),
                  datasets=[{"name": "ctrate", "kind": "local", "root": str(root), "layout": {"modality": "CT"}}],
                  splits={"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}})
    path = workdir / f"{study}.yaml"
    path.write_text(yaml.safe_dump(config))
    results = workdir / "results" / study
    (results / "raw" / "ctrate").mkdir(parents=True, exist_ok=True)
    ids = [f"train_{i // 2 + 1}_{'ab'[i % 2]}_1" for i in range(cases)]
    pd.DataFrame({"path": [f"{i}.nii.gz" for i in ids], "bytes": 0, "sha256": ""}).to_csv(
        results / "raw" / "ctrate" / "inventory.csv", index=False)
    time.sleep(1.1)  # the case table must be newer than the inventory it derives from
    pd.DataFrame({"case_id": [f"ctrate_{i}" for i in ids], "patient_id": [i.rsplit("_", 2)[0] for i in ids],
                  "dataset": "ctrate", "modality": "CT", "source_kind": "nifti",
                  "source": [str(root / f"{i}.nii.gz") for i in ids], "series_uid": "", "label": "", "split": ""}
                 ).sort_values("case_id").to_csv(results / "sources.csv", index=False)
    return path


def job_count(output: str) -> int:
    match = re.search(r"^total\s+(\d+)", output, re.M)
    return int(match.group(1)) if match else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=25692)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--skip-noop", action="store_true", help="skip the embedded study's no-op rerun")
    args = parser.parse_args()
    # snakemake-executor-plugin-slurm runs `scontrol show config` (10 s timeout) when it is imported, i.e.
    # in every snakemake call on a machine with a SLURM client. With no controller answering (a stopped
    # test cluster) that alone takes seconds: then every time is also measured with `scontrol` failing
    # at once (a shim first on PATH), side by side.
    probe = slurm_probe_seconds()
    stalled = probe is not None and probe > 1.0
    if probe is not None:
        print(f"scontrol show config: {probe:.1f} s" + (" (no controller answering)" if stalled else ""))
    with tempfile.TemporaryDirectory() as shim:
        fake = Path(shim) / "scontrol"
        fake.write_text("#!/bin/sh\nexit 1\n")
        fake.chmod(0o755)
        fast_env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}
        extra = f" {'scontrol failing s':>19s}" if stalled else ""
        print(f"{'study':32s} {'shard_size':>10s} {'jobs':>8s} {'dry-run s':>10s}{extra}")
        with tempfile.TemporaryDirectory() as tmp:
            for shard_size in args.shard_sizes:
                config = large_study(Path(tmp), args.cases, shard_size)
                seconds, out = snakemake(Path(tmp), config, "-n", "--rerun-triggers", "mtime")
                fast = f" {snakemake(Path(tmp), config, '-n', '--rerun-triggers', 'mtime', env=fast_env)[0]:>19.1f}" \
                    if stalled else ""
                print(f"{f'{args.cases} cases (CT-RATE size)':32s} {shard_size:>10d} {job_count(out):>8d} "
                      f"{seconds:>10.1f}{fast}")
        if not args.skip_noop:
            config = REPO / "config" / "config.yaml"
            snakemake(REPO, config)  # make sure everything is built
            seconds, out = snakemake(REPO, config)
            assert "Nothing to be done" in out, out[-2000:]
            fast = ""
            if stalled:
                fast_s, out = snakemake(REPO, config, env=fast_env)
                assert "Nothing to be done" in out, out[-2000:]
                fast = f" {fast_s:>19.1f}"
            print(f"{'embedded study, no-op rerun':32s} {'':>10s} {0:>8d} {seconds:>10.1f}{fast}")


def slurm_probe_seconds() -> float | None:
    """Seconds ``scontrol show config`` takes here (None without a SLURM client)."""
    if shutil.which("scontrol") is None:
        return None
    start = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
