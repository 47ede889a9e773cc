"""Plan a paper study at its published size without data (test helper of tests/test_paper_studies.py).

Each dataset of the study gets an empty inventory and the case table (``sources.csv``, the checkpoint
the shard list comes from) gets as many rows as the dataset registry's ``published_cases`` says, so that
``snakemake --dry-run`` lays out the whole study; :func:`plan` parses the jobs it prints.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    """One job of a dry run: its rule, wildcards, inputs, outputs and resources."""

    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    resources: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    """The parsed dry run of a study."""

    config: dict
    jobs: list[Job]
    output: str

    def rules(self) -> set[str]:
        return {job.rule for job in self.jobs}

    def of(self, rule: str) -> list[Job]:
        return [job for job in self.jobs if job.rule == rule]

    def targets(self) -> list[str]:
        """The inputs of rule ``all`` (what `snakemake` builds by default)."""
        return next(job.inputs for job in self.jobs if job.rule == "all")


def study_config(path: Path) -> dict:
    """The study's config as snakemake sees it: merged onto what it `extends` (one level, from the workflow
    folder; default the embedded config)."""
    from medsynth.configmerge import deep_merge, extended_config

    own = yaml.safe_load(path.read_text())
    base_name = own.get("extends", "config/config.yaml")
    if not base_name:
        return own
    return deep_merge(yaml.safe_load(Path(extended_config(base_name, str(REPO))).read_text()), own)


def published_sources(config: dict, registry: dict) -> pd.DataFrame:
    """A case table with each dataset's ``published_cases`` rows (int, or modality -> count), two cases per
    patient."""
    rows = []
    for name in config["datasets"]:
        name = name if isinstance(name, str) else name["name"]
        entry = registry[name]
        counts = entry.get("published_cases")
        if counts is None:
            raise KeyError(f"dataset {name}: the registry gives no published_cases")
        if isinstance(counts, int):
            counts = {entry.get("layout", {}).get("modality", "CT"): counts}
        i = 0
        for modality, count in counts.items():
            for _ in range(int(count)):
                rows.append({"case_id": f"{name}_{i:06d}", "patient_id": f"{name}_p{i // 2:06d}", "dataset": name,
                             "modality": modality, "source_kind": "nifti", "source": f"/absent/{name}/{i}.nii.gz",
                             "series_uid": "", "label": "", "split": ""})
                i += 1
    return pd.DataFrame(rows)


def plan(study: Path, workdir: Path, *targets: str, timeout: int = 900) -> Plan:
    """Dry-run ``study`` (a config file) at its published size in ``workdir``; parse every job."""
    config = study_config(study)
    registry = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())
    results = workdir / config.get("results_dir", "results") / config["study"]
    for name in config["datasets"]:
        name = name if isinstance(name, str) else name["name"]
        raw = results / "raw" / name
        raw.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"path": [], "bytes": [], "sha256": []}).to_csv(raw / "inventory.csv", index=False)
    time.sleep(1.1)  # the case table must be newer than the inventories it derives from
    published_sources(config, registry).to_csv(results / "sources.csv", index=False)
    env = {**os.environ, "MEDSYNTH_GPU_PARTITION": "", "MEDSYNTH_SLURM_PARTITION": "", "MEDSYNTH_SLURM_ACCOUNT": ""}
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(study), "--config", "min_free_gib=0",  # plans only: no space needed here
           "--cores", "2", *targets]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"dry run of {study.name} failed:\n{output[-6000:]}")
    return Plan(config, parse_jobs(output), output)


_JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_FIELD = re.compile(r"^    (input|output|wildcards|resources): (.*)$")


def parse_jobs(output: str) -> list[Job]:
    """The jobs of snakemake's dry-run listing."""
    jobs: list[Job] = []
    for line in output.splitlines():
        m = _JOB.match(line)
        if m:
            jobs.append(Job(m[1]))
            continue
        m = _FIELD.match(line)
        if not m or not jobs:
            continue
        key, value = m[1], m[2]
        job = jobs[-1]
        if key == "input":
            job.inputs = [v.strip() for v in value.split(", ")]
        elif key == "output":
            job.outputs = [v.strip() for v in value.split(", ")]
        else:
            pairs = dict(item.split("=", 1) for item in value.split(", ") if "=" in item)
            setattr(job, key, pairs)
    return jobs


def gpu_hours(p: Plan) -> dict[str, float]:
    """GPU-hours each rule asks for (gpu x runtime over its jobs): the budget the study requests, an upper
    bound of what it uses (a job that ends early frees its GPUs)."""
    hours: dict[str, float] = {}
    for job in p.jobs:
        gpus = int(job.resources.get("gpu", 0) or 0)
        if gpus:
            hours[job.rule] = hours.get(job.rule, 0.0) + gpus * int(job.resources.get("runtime", 0)) / 60
    return hours


def main(argv: list[str] | None = None) -> None:
    """``python tests/paper_dag.py config/studies/<paper>.yaml``: jobs per rule and the GPU-hours requested."""
    import argparse
    import collections
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("study", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        p = plan(args.study.resolve(), Path(tmp))
    counts = collections.Counter(job.rule for job in p.jobs)
    hours = gpu_hours(p)
    print(f"{args.study}: {len(p.jobs)} jobs; GPU-hours requested (gpu x runtime): {sum(hours.values()):,.0f}")
    for rule, n in counts.most_common():
        print(f"  {rule:20s} {n:6d} jobs" + (f"  {hours[rule]:10,.0f} GPU-h" if rule in hours else ""))


if __name__ == "__main__":
    main()
