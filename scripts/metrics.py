"""Rule metrics: every metric of one model x sampling run on the eval condition set."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.evaluation import evaluate_run

with tracked(snakemake):
    evaluate_run(snakemake.input.generated, snakemake.input.index, snakemake.input.summary, snakemake.input.shards,
                 snakemake.input.extractor, snakemake.output[0], snakemake.params.metrics, snakemake.params.intensity,
                 snakemake.params.select, snakemake.params.severity, snakemake.params.severity_prompt,
                 snakemake.params.grid, snakemake.params.slice_size, snakemake.wildcards.model,
                 snakemake.wildcards.run)
