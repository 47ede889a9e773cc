"""Rule download: fetch one dataset (or verify shipped/local files) and write its inventory."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.data.download import DownloadPolicy
from medsynth.data.fetch import fetch_dataset, inventory
from medsynth.fsutil import write_csv_atomic

root = fetch_dataset(
    snakemake.params.entry,
    snakemake.params.raw_dir,
    DownloadPolicy.from_config(snakemake.params.download),
    base_dir=snakemake.params.base_dir,
)
write_csv_atomic(inventory(root), snakemake.output.inventory)
