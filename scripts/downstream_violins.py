"""Rule downstream_violins: per-slice Dice of each downstream setting per structure (ViCTr Fig. 7)."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "report:downstream_violins")
