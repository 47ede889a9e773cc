"""Rule fd_vs_nfe: Frechet distance against NFE for the runs of the steps sweep."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.evaluation_figures import fd_vs_nfe
from medsynth.tables import load_json

with tracked(snakemake):
    fd_vs_nfe([load_json(p) for p in snakemake.input], snakemake.output[0])
