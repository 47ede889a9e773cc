"""Rule headline_table: the claims or the calibration table (CSV + Markdown)."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "tables:headline_table")
