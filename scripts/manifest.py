"""Rule manifest: the case index with patient-level splits, and the quarantine table."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from pathlib import Path

import pandas as pd

from medsynth.data.ingest import SHARD_TABLE
from medsynth.data.manifest import build_manifest
from medsynth.fsutil import write_csv_atomic

with tracked(snakemake):
    tables = [pd.read_csv(Path(shard) / SHARD_TABLE, dtype=str, keep_default_na=False) for shard in snakemake.input.shards]
    manifest, quarantine = build_manifest(tables, snakemake.params.splits, snakemake.params.seed)
    write_csv_atomic(manifest, snakemake.output.manifest)
    write_csv_atomic(quarantine, snakemake.output.quarantine)
