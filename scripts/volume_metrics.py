"""Rule volume_metrics: per-plane windowed FD (MedSyn2 Table 1, MAISI 2.5D) and more for one volume run."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "volumes:volume_metrics")
