"""Rule ingest: canonical NIfTI + QC for one shard of cases."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

import pandas as pd

from medsynth.data.ingest import IngestOptions, ingest_shard
from medsynth.data.manifest import shard_of

with tracked(snakemake):
    sources = pd.read_csv(snakemake.input.sources, dtype=str, keep_default_na=False)
    ingest_shard(
        shard_of(sources, snakemake.wildcards.shard, snakemake.params.shard_size),
        snakemake.output.shard,
        IngestOptions.from_config(snakemake.params.ingest),
    )
