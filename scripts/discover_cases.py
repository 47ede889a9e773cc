"""Checkpoint discover_cases: one sources row per case of every dataset in the study."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "data:discover_cases")
