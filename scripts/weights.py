"""Rule weights: fetch one pretrained model of config/models.yaml into the weights folder."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "weights:weights")
