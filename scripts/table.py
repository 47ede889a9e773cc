"""Rules of rules/tables.smk: one paper table (CSV + Markdown) from metrics / evaluation files."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "tables:table")
