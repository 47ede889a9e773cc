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

__all__ = ["LossCurve", "write_curve"]


def _curve_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open(newline="") as fh:
        return max(0, sum(1 for _ in fh) - 1)


class LossCurve:
    """``loss_curve.csv``: one row per optimizer step, rewritten up to ``start`` on resume.

    Every checkpoint keeps a copy of the curve, so a resumed run whose ``loss_curve.csv`` was removed
    meanwhile (Snakemake deletes a failed or preempted job's declared outputs) still writes every step.
    """

    def __init__(self, path: Path, start: int, enabled: bool, checkpoint: Path | None = None):
        self.path = path
        self.enabled = enabled
        self.fieldnames: list[str] | None = None
        self._fh = None
        self._writer: csv.DictWriter | None = None
        if not enabled:
            return
        saved = checkpoint / LOSS_CURVE if checkpoint is not None else None
        if saved is not None and saved.exists() and _curve_rows(path) < _curve_rows(saved):
            shutil.copyfile(saved, path)
        kept: list[dict[str, str]] = []
        if path.exists() and start > 0:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.fieldnames = list(reader.fieldnames or []) or None
                kept = [r for r in reader if int(r["step"]) <= start]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            if self.fieldnames:
                w = csv.DictWriter(fh, self.fieldnames)
                w.writeheader()
                w.writerows(kept)
        os.replace(tmp, path)
        self._fh = path.open("a", newline="")
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
        if self._fh is not None:
            self._fh.close()
            self._fh = None


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
