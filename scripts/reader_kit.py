"""Rule reader_kit: the blinded reader-study kit (index.html + images) and its key, kept apart."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "readers:reader_kit")
