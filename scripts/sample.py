"""Rule sample: one trained model x one sampler run x one condition set."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.generator.sampling import sample_condition_set

with tracked(snakemake, seed=snakemake.params.sampling.get("seed")):
    sample_condition_set(snakemake.input.shards, snakemake.input.vae, snakemake.input.stats, snakemake.input.model,
                         snakemake.input.get("init"), snakemake.output.tensors, snakemake.output.index,
                         snakemake.output.summary, snakemake.params.generator, snakemake.params.model_cfg,
                         snakemake.params.sampling, snakemake.wildcards.run, snakemake.params.select)
