"""Rule volume_downstream: MAISI-v2's 3D tumour segmenter of one task x setting, scored on the real test volumes."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

run_rule(snakemake, "volumes:volume_downstream")
