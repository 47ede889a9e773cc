"""Rule calibration: the reference rows (real, VAE, degraded held-out slices) of the calibration table."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "metrics:calibration")
