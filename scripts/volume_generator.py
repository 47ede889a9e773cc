"""Rule volume_generator: the 3D generator on volume latents."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "volumes:volume_generator")
