"""Rule architecture: a MedSyn2 architecture ablation, trained from scratch like the base model."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "generator:architecture")
