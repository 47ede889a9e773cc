"""Rule download: fetch one dataset (or verify shipped/local files) and write its inventory."""

import os
import sys

sys.path.insert(0, os.path.dirname(snakemake.scriptdir))  # this checkout's medsynth package

from medsynth.logutil import log_to_file

log_to_file(snakemake.log[0])

from medsynth.provenance import tracked

from pathlib import Path

from medsynth.data.discover import portable_path
from medsynth.data.download import DownloadPolicy
from medsynth.data.fetch import ManualDownloadRequired, fetch_dataset, inventory
from medsynth.fsutil import write_csv_atomic

with tracked(snakemake) as provenance:
    try:
        root = fetch_dataset(
            snakemake.params.entry,
            snakemake.params.raw_dir,
            DownloadPolicy.from_config(snakemake.params.download),
            base_dir=snakemake.params.base_dir,
        )
    except ManualDownloadRequired as steps:  # the person at the terminal needs these steps, not only the log
        print(f"\n{steps}\n", file=sys.__stderr__)
        raise
    files = inventory(root)
    write_csv_atomic(files, snakemake.output.inventory)
    provenance.raw = {portable_path(str(Path(root) / rel)): sha for rel, sha in zip(files["path"], files["sha256"])}
