"""Rule training_sets: 2D slices and 3D volumes of one shard as safetensors + index CSVs."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.steps import training_sets_for_shard

with tracked(snakemake):
    training_sets_for_shard(snakemake.input.manifest, snakemake.input.registered, snakemake.input.masks,
                            snakemake.output, snakemake.params.intensity, snakemake.params.trainsets)
