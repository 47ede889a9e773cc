"""Rule stage2: ViCTr stage 2 for one variant (LoRA or full fine-tuning)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.generator.stages import run_stage2

with tracked(snakemake, seed=snakemake.params.stage.get("seed")):
    run_stage2(snakemake.input.shards, snakemake.input.vae, snakemake.input.stats, snakemake.input.init,
               snakemake.input.ewc, Path(snakemake.output.final).parent, snakemake.params.generator, snakemake.params.stage,
               ddpm_cfg=snakemake.params.ddpm)
