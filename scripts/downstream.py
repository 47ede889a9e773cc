"""Rule downstream: train the segmenter of one setting and score it on the real test slices."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "downstream:downstream")
