"""Rule register: affine registration of one shard onto the study grid."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.steps import register_ingest_shard

with tracked(snakemake):
    register_ingest_shard(snakemake.input.manifest, snakemake.input.shard, snakemake.input.templates,
                          snakemake.output.shard, snakemake.params.preprocess)
