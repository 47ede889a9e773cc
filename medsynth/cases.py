"""Each case of a shard, one at a time: a failing case is quarantined with its reason, the rest go on.

The ingest, registration and mask stages all process a shard the same way (``process_cases``): every
case is written into a temporary folder that becomes the shard's declared output only when the
whole shard is done, a case that fails leaves none of its files behind, and the shard table
(``cases.csv``) has one row per case with ``status`` (``ok`` / ``quarantined``) and ``reason``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from medsynth.fsutil import atomic_dir

__all__ = ["SHARD_TABLE", "STATUS_COLUMNS", "CaseRejected", "remove_case_files", "process_cases", "read_shard_table"]

log = logging.getLogger(__name__)

#: The per-shard case table of every per-case stage.
SHARD_TABLE = "cases.csv"
#: The columns every shard table ends with.
STATUS_COLUMNS = ("status", "reason")


class CaseRejected(ValueError):
    """A case fails a check: quarantined with ``str(err)`` as its reason and ``details`` in its row."""

    def __init__(self, reason: str, details: Mapping | None = None):
        super().__init__(reason)
        self.details = dict(details or {})


def remove_case_files(folder: Path, case_id: str) -> None:
    """Delete every file of ``case_id`` under ``folder`` (a quarantined case leaves nothing behind)."""
    for path in folder.rglob(f"{case_id}.*"):
        path.unlink()


def read_shard_table(folder: str | Path) -> pd.DataFrame:
    """The shard table of a stage's shard folder, as strings (a shard with no case has its header only)."""
    path = Path(folder) / SHARD_TABLE
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:  # written by a version that dropped the header of empty shards
        raise ValueError(f"{path} has no header (an empty shard written by an older version): delete {Path(folder)}"
                         " and rerun to rebuild it") from err


def process_cases(cases: Iterable[Mapping], out_dir: str | Path, process: Callable[[dict, Path], dict], *,
                  columns: Sequence[str], error_reason: Callable[[Exception], str],
                  path_keys: Sequence[str] = (), stage: str = "process", progress: bool = True,
                  finish: Callable[[Path], None] | None = None) -> pd.DataFrame:
    """Run ``process(case, tmp)`` on every case; write the folder ``out_dir`` and its ``cases.csv`` atomically.

    ``columns`` are the identifying columns copied from each case into its row (and the header of a
    shard with no case, so that every shard table is a CSV with its header); ``process`` writes the case's
    files under ``tmp`` and returns the columns it produced, whose ``path_keys`` (paths under ``tmp``)
    are rewritten to the final folder. ``CaseRejected`` quarantines with its message as the reason
    (a check the case failed); any other exception with ``error_reason(err)`` and its traceback in
    the log. ``finish(tmp)`` writes the shard's own files before the folder is moved into place.
    Returns the shard table.
    """
    out_dir = Path(out_dir)
    cases = list(cases)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for case in tqdm(cases, desc=f"{stage} {out_dir.name}", disable=not progress):
            result = {key: case[key] for key in columns}
            try:
                produced = process(case, tmp)
                for key in path_keys:  # paths inside the temporary folder become paths inside the final one
                    if produced.get(key):
                        produced[key] = str(out_dir / Path(produced[key]).relative_to(tmp))
                result.update(produced, status="ok", reason="")
            except CaseRejected as err:
                log.warning("quarantined %s: %s", case["case_id"], err)
                remove_case_files(tmp, case["case_id"])
                result.update(err.details, status="quarantined", reason=str(err))
            except Exception as err:  # unexpected: keep the study going, keep the evidence
                log.error("%s of %s failed:\n%s", stage, case["case_id"], traceback.format_exc())
                remove_case_files(tmp, case["case_id"])
                result.update(status="quarantined", reason=error_reason(err))
            rows.append(result)
        table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*columns, *STATUS_COLUMNS])
        if finish is not None:
            finish(tmp)
        table.to_csv(tmp / SHARD_TABLE, index=False)
    return table
