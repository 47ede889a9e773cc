"""Rule reader_scores: the readers' answer files scored against the key (Visual Turing, match, kappa)."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "readers:reader_scores")
