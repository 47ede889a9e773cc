"""Tasks of rules/data.smk: download, discover_cases, ingest, manifest."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from medsynth.cases import read_shard_table
from medsynth.fsutil import write_csv_atomic
from medsynth.tasks import Job, task


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@task()
def download(job: Job) -> dict[str, str]:
    """Fetch one dataset (or verify shipped / local files); write its inventory; return the raw files' sha256."""
    from medsynth.data.discover import portable_path
    from medsynth.data.download import DownloadPolicy
    from medsynth.data.fetch import ManualDownloadRequired, fetch_dataset, inventory

    try:
        root = fetch_dataset(job.params.entry, job.params.raw_dir, DownloadPolicy.from_config(job.params.download),
                             base_dir=job.params.base_dir)
    except ManualDownloadRequired as steps:  # the person at the terminal needs these steps, not only the log
        print(f"\n{steps}\n", file=sys.__stderr__)
        raise
    files = inventory(root)
    write_csv_atomic(files, job.output.inventory)
    return {portable_path(str(Path(root) / rel)): sha for rel, sha in zip(files["path"], files["sha256"])}


@task()
def discover_cases(job: Job) -> None:
    """One sources row per case of every dataset of the study."""
    from medsynth.data.discover import discover_cases as discover
    from medsynth.data.discover import portable_path
    from medsynth.data.registry import dataset_root

    tables = [discover(entry, dataset_root(entry, job.params.raw_dir, job.params.base_dir))
              for entry in job.params.entries]
    sources = pd.concat(tables, ignore_index=True).fillna("").sort_values("case_id").reset_index(drop=True)
    for column in ("source", "label"):  # paths inside the working folder stay relative (portable manifests)
        sources[column] = [portable_path(p) for p in sources[column]]
    write_csv_atomic(sources, job.output.sources)


@task()
def ingest(job: Job) -> None:
    """Canonical NIfTI + QC for one shard of cases (a failing case is quarantined in the shard table)."""
    from medsynth.data.ingest import IngestOptions, ingest_shard
    from medsynth.data.manifest import shard_of

    sources = _read(job.input.sources)
    ingest_shard(shard_of(sources, job.wildcards.shard, job.params.shard_size), job.output.shard,
                 IngestOptions.from_config(job.params.ingest))


@task()
def manifest(job: Job) -> None:
    """The study's case index with patient-level splits, and the ingest quarantine table."""
    from medsynth.data.manifest import build_manifest

    tables = [read_shard_table(shard) for shard in job.input.shards]
    index, quarantine = build_manifest(tables, job.params.splits, job.params.seed)
    write_csv_atomic(index, job.output.manifest)
    write_csv_atomic(quarantine, job.output.quarantine)
