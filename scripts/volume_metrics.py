"""Rule volume_metrics: per-plane windowed FD (MedSyn2 Table 1, MAISI 2.5D) and more for one volume run."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.evaluation import evaluate_volume_run

with tracked(snakemake):
    evaluate_volume_run(snakemake.input.generated, snakemake.input.index, snakemake.input.summary,
                        snakemake.input.shards, snakemake.input.extractor, snakemake.output[0],
                        snakemake.params.metrics, snakemake.params.intensity, snakemake.params.select,
                        "volumes", snakemake.wildcards.run, snakemake.params.grid)
