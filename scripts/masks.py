"""Rule masks: label maps, condition masks and mask QC of one registered shard."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.tasks import run_rule

if __name__ == "__main__":  # TotalSegmentator's worker processes re-import the main module
    run_rule(snakemake, "masks:masks")
