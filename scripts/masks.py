"""Rule masks: label maps, condition masks and mask QC of one registered shard."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from medsynth.steps import masks_for_shard

if __name__ == "__main__":  # TotalSegmentator's worker processes re-import the main module
    with tracked(snakemake):
        masks_for_shard(snakemake.input.registered, snakemake.output.shard, snakemake.params.masks)
