"""Task of rules/weights.smk: fetch one pretrained model of the registry into the shared weights folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medsynth.fsutil import write_csv_atomic, write_text_atomic
from medsynth.tasks import Job, task


@task()
def weights(job: Job) -> dict[str, str]:
    """Fetch (or re-verify) the model; write its inventory and source record; return the files' sha256."""
    from medsynth.data.discover import portable_path
    from medsynth.data.download import DownloadPolicy
    from medsynth.data.fetch import ManualDownloadRequired
    from medsynth.weights.fetch import fetch_model, source_record

    entry = job.params.entry
    files_dir = Path(job.output.inventory).parent / "files"
    try:
        files = fetch_model(entry, files_dir, DownloadPolicy.from_config(job.params.download))
    except ManualDownloadRequired as steps:  # the person at the terminal needs these steps, not only the log
        print(f"\n{steps}\n", file=sys.__stderr__)
        raise
    write_text_atomic(job.output.source, json.dumps(source_record(entry, files_dir, files), indent=2) + "\n")
    write_csv_atomic(files, job.output.inventory)
    return {portable_path(str(files_dir / rel)): sha for rel, sha in zip(files["path"], files["sha256"])}
