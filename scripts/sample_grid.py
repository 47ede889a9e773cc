"""Rule sample_grid: mask | real | generated per model and sampler."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.evaluation_figures import sample_grid_from_files

with tracked(snakemake):
    sample_grid_from_files(snakemake.input.shards, snakemake.params.select,
                           {label: snakemake.input[label] for label in snakemake.params.labels},
                           snakemake.params.intensity, snakemake.params.window, snakemake.params.n_conditions,
                           snakemake.output[0])
