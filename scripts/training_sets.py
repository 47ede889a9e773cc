"""Rule training_sets: 2D slices and 3D volumes of one shard as safetensors + index CSVs."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "preprocess:training_sets")
