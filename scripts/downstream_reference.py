"""Rule downstream_reference: score a pretrained segmenter on a downstream task's real test slices."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "downstream:downstream_reference")
