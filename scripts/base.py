"""Rule base: train the base generator."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.launch import launch_processes, relaunch
from medsynth.provenance import tracked

from medsynth.generator.stages import run_base

stage = snakemake.params.stage
with tracked(snakemake, seed=stage.get("seed")):
    # more than one process (stage `processes` or the job's GPUs): accelerate workers do the work
    if not relaunch(launch_processes(stage, snakemake.resources), mixed_precision=stage.get("mixed_precision", "no")):
        run_base(snakemake.input.shards, snakemake.input.vae, snakemake.input.stats, Path(snakemake.output.final).parent,
                 snakemake.params.generator, snakemake.params.stage)
