"""Rule stage1: ViCTr stage 1 (EWC layer selection + penalised fine-tuning)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.generator.stages import run_stage1

with tracked(snakemake, seed=snakemake.params.stage.get("seed")):
    run_stage1(snakemake.input.shards, snakemake.input.vae, snakemake.input.stats, snakemake.input.base,
               Path(snakemake.output.final).parent, snakemake.params.generator, snakemake.params.stage,
               snakemake.params.base_stage)
