"""Rule vae: tune the VAE, latent statistics, reconstruction metrics."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.generator.stages import run_vae

with tracked(snakemake, seed=snakemake.params.vae.get("seed")):
    run_vae(snakemake.input.shards, Path(snakemake.output.final).parent, snakemake.params.vae,
            snakemake.output.reconstruction)
