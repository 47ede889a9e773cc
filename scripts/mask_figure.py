"""Rule mask_figure: condition masks over registered images."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.steps import mask_figure

with tracked(snakemake):
    mask_figure(snakemake.input.registered, snakemake.input.masks, snakemake.output.figure,
                snakemake.params.figures, snakemake.params.intensity)
