"""Rule fd_vs_nfe: Frechet distance against NFE for the runs of the steps sweep."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "report:fd_vs_nfe")
