"""Rule downstream: train the segmenter of one setting and score it on the real test slices."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.evaluation import run_downstream

with tracked(snakemake, seed=snakemake.params.downstream.get("seed")):
    run_downstream(snakemake.input.shards, snakemake.input.get("synthetic"), snakemake.wildcards.setting,
                   snakemake.params.downstream, Path(snakemake.output.final).parent, snakemake.output.evaluation,
                   snakemake.params.grid, snakemake.params.slice_size, extractor=snakemake.input.get("extractor"))
