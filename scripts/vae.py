"""Rule vae: tune the VAE, latent statistics, reconstruction metrics."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.launch import launch_processes, relaunch
from medsynth.provenance import tracked

from medsynth.generator.stages import run_vae

vae = snakemake.params.vae
with tracked(snakemake, seed=vae.get("seed")):
    # more than one process (vae `processes` or the job's GPUs): accelerate workers do the work
    if not relaunch(launch_processes(vae, snakemake.resources)):
        run_vae(snakemake.input.shards, Path(snakemake.output.final).parent, vae, snakemake.output.reconstruction)
