"""Rule volume_vae: tune the 3D VAE on the training volumes."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "volumes:volume_vae")
