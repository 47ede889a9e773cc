"""Rule quarantine: every case left out, by stage, with its reason."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.steps import combine_quarantine

with tracked(snakemake):
    combine_quarantine(snakemake.input.ingest, snakemake.input.registered, snakemake.input.masks, snakemake.output.table)
