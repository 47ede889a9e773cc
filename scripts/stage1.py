"""Rule stage1: ViCTr stage 1 (EWC layer selection + penalised fine-tuning)."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "generator:stage1")
