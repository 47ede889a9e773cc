"""Rule downstream: train the segmenter of one setting and score it on the real test slices."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.launch import launch_processes, relaunch
from medsynth.provenance import tracked

from medsynth.evaluation import run_downstream

cfg = snakemake.params.downstream
# nnU-Net runs its own trainer (one process); the MONAI segmenters train under accelerate like the generators
nnunet = str((cfg.get("model") or {}).get("type", "unet")).lower() == "nnunetv2"
processes = 1 if nnunet else launch_processes(cfg, snakemake.resources)
with tracked(snakemake, seed=cfg.get("seed")):
    if not relaunch(processes):
        run_downstream(snakemake.input.shards, snakemake.input.get("synthetic"), snakemake.wildcards.setting,
                       cfg, Path(snakemake.output.final).parent, snakemake.output.evaluation,
                       snakemake.params.grid, snakemake.params.slice_size, extractor=snakemake.input.get("extractor"))
