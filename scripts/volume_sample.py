"""Rule volume_sample: one generated volume per real volume of a condition set."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "volumes:volume_sample")
