"""Rules of rules/tables.smk: one paper table (CSV + Markdown) from metrics / evaluation files."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.tables import make_table

with tracked(snakemake):
    make_table(snakemake.params.table, dict(snakemake.input.items()), snakemake.params.settings,
               snakemake.output.csv, snakemake.output.md)
