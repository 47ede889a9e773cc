"""Rule loss_curves: training loss of every stage."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.evaluation_figures import loss_curves

with tracked(snakemake):
    loss_curves(dict(snakemake.input.items()), snakemake.output[0])
