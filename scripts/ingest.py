"""Rule ingest: canonical NIfTI + QC for one shard of cases."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "data:ingest")
