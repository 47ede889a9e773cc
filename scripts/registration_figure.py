"""Rule registration_figure: registered cases over their template."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.steps import registration_figure

with tracked(snakemake):
    registration_figure(snakemake.input.templates, snakemake.input.registered, snakemake.output.figure,
                        snakemake.params.figures, snakemake.params.intensity)
