"""Checkpoint discover_cases: one sources row per case of every dataset in the study."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

import pandas as pd

from medsynth.data.discover import discover_cases, portable_path
from medsynth.data.registry import dataset_root
from medsynth.fsutil import write_csv_atomic

with tracked(snakemake):
    tables = [
        discover_cases(entry, dataset_root(entry, snakemake.params.raw_dir, snakemake.params.base_dir))
        for entry in snakemake.params.entries
    ]
    sources = pd.concat(tables, ignore_index=True).fillna("").sort_values("case_id").reset_index(drop=True)
    for column in ("source", "label"):  # paths inside the working folder stay relative (portable manifests)
        sources[column] = [portable_path(p) for p in sources[column]]
    write_csv_atomic(sources, snakemake.output.sources)
