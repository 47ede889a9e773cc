"""Rule templates: the study grid image of each modality in the training split."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.steps import make_templates

with tracked(snakemake):
    make_templates(snakemake.input.manifest, snakemake.output.templates, snakemake.params.preprocess)
