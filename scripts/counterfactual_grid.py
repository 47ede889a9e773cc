"""Rule counterfactual_grid: the edit figure of config figures.counterfactual."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "report:counterfactual_grid")
