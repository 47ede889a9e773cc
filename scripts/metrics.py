"""Rule metrics: every metric of one model x sampling run on the eval condition set."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "metrics:metrics")
