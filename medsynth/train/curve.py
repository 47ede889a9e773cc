"""The one home of loss-curve writing: :class:`LossCurve` (``loss_curve.csv``, one row per optimizer step,
appended as training goes and resumable) and :func:`write_curve` (a whole curve at once, for trainers
that report theirs at the end, e.g. nnU-Net's logger state)."""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from medsynth.train.config import LOSS_CURVE

__all__ = ["LossCurve", "in_progress_path", "write_curve"]


def _curve_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open(newline="") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def in_progress_path(path: Path) -> Path:
    """Where a curve is written while its run goes on (``loss_curve.csv.partial``): nothing under the final name
    until the run completes."""
    return path.with_name(path.name + ".partial")


class LossCurve:
    """``loss_curve.csv``: one row per optimizer step, rewritten up to ``start`` on resume.

    Rows go to :func:`in_progress_path` while the run goes on; :meth:`finish` moves the complete
    curve to its final name, so a killed run never leaves a partial curve under it. Every checkpoint
    keeps a copy of the curve, so a resumed run whose curve was removed meanwhile (Snakemake deletes
    a failed or preempted job's outputs) still writes every step.
    """

    def __init__(self, path: Path, start: int, enabled: bool, checkpoint: Path | None = None):
        self.path = path
        self.working = in_progress_path(path)
        self.enabled = enabled
        self.fieldnames: list[str] | None = None
        self._fh = None
        self._writer: csv.DictWriter | None = None
        if not enabled:
            return
        current = self.working if self.working.exists() else path  # a killed run's rows, or a finished curve
        saved = checkpoint / LOSS_CURVE if checkpoint is not None else None
        if saved is not None and saved.exists() and _curve_rows(current) < _curve_rows(saved):
            current = saved
        kept: list[dict[str, str]] = []
        if current.exists() and start > 0:
            with current.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.fieldnames = list(reader.fieldnames or []) or None
                kept = [r for r in reader if int(r["step"]) <= start]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            if self.fieldnames:
                w = csv.DictWriter(fh, self.fieldnames)
                w.writeheader()
                w.writerows(kept)
        os.replace(tmp, self.working)
        path.unlink(missing_ok=True)  # the run is not complete: no curve under the final name until finish()
        self._fh = self.working.open("a", newline="")
        if self.fieldnames:
            self._writer = csv.DictWriter(self._fh, self.fieldnames, extrasaction="ignore", restval="")

    def append(self, row: dict[str, float]) -> None:
        if not self.enabled or self._fh is None:
            return
        if self._writer is None:
            self.fieldnames = list(row)
            self._writer = csv.DictWriter(self._fh, self.fieldnames, extrasaction="ignore", restval="")
            self._writer.writeheader()
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        """Stop writing; the rows stay in the in-progress file (a preempted or failed run resumes from them)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self) -> None:
        """Close and move the complete curve to its final name."""
        self.close()
        if self.enabled and self.working.exists():
            os.replace(self.working, self.path)


def write_curve(path: str | Path, rows: Sequence[Mapping[str, float]], columns: Sequence[str],
                missing: float = math.nan) -> Path:
    """Write ``rows`` as a curve with ``columns`` (a value a row lacks is ``missing``), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, missing) for k in columns})
    tmp.replace(path)
    return path
