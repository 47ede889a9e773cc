"""Rule manifest: the case index with patient-level splits, and the quarantine table."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "data:manifest")
