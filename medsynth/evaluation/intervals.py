"""Bootstrap intervals of a record's metrics (:mod:`medsynth.stats.bootstrap`), over the test patients.

Every metrics and downstream record gains ``estimates`` (``{metric: {"value", "low", "high"}}``, flat
keys: ``fd_self``, ``fid``, ``ssim``, ``psnr``, ``l1``, ``dice``, ``hd95``, ``jaccard``, ``asd``,
``control_accuracy``, ``<metric>/<channel>``, ``real_vs_gt/<metric>[/<channel>]`` (the real slices
re-segmented), ``fd_window/<window>``; downstream: ``mdsc``, ``mhd95``, ...) and
``bootstrap`` (the resampling: unit, resamples, level, seed, units digest, and each metric's
replicates). Replicates of records scored on the same units with the same seed share their resamples,
so the claims table pairs them. A point value equals the record's own value of the same metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medsynth.metrics.frechet import frechet_distance_lowrank
from medsynth.stats.bootstrap import (
    BootstrapSettings,
    Estimate,
    bootstrap,
    bootstrap_means,
    percentile_interval,
    resampling_units,
)

__all__ = ["IntervalSet", "mask_estimates", "window_estimates"]

#: Per-sample mask metric -> its estimate key (the record's channel means).
MASK_KEYS = ("dice", "jaccard", "hd95", "asd")


class IntervalSet:
    """The estimates of one record: one resampling of its test rows, shared by every metric added."""

    def __init__(self, rows: pd.DataFrame, statistics: Mapping):
        self.settings = BootstrapSettings.from_config(statistics["bootstrap"])
        self.units = resampling_units(rows.reset_index(drop=True), self.settings)
        self.draws = self.units.draws(self.settings.resamples, self.settings.seed)
        self.n = len(rows)
        self.estimates: dict[str, Estimate] = {}

    def add(self, key: str, estimate: Estimate) -> Estimate:
        self.estimates[key] = estimate
        return estimate

    def means(self, key: str, values: np.ndarray) -> Estimate:
        """Mean of per-sample values (``[N]``, or ``[N, C]`` averaged per channel first)."""
        return self.add(key, bootstrap_means(values, self.draws, self.settings.level))

    def frechet(self, key: str, real_features, fake_features) -> Estimate:
        """Fréchet distance of paired rows (sample ``i`` generated for real ``i``): both sides resampled alike.
        The point value is the caller's (torch-fidelity's); the replicates use the same formula via
        :func:`frechet_distance_lowrank`."""
        real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
        if len(real) != self.n or len(fake) != self.n:
            raise ValueError(f"{key}: {len(real)} / {len(fake)} feature rows for {self.n} test rows")
        return self.add(key, bootstrap(lambda rows: frechet_distance_lowrank(real[rows], fake[rows]), self.n,
                                       self.draws, self.settings.level))

    def record(self) -> dict:
        """``{"estimates": ..., "bootstrap": ...}`` for the record's JSON."""
        return {"estimates": {k: e.cells() for k, e in self.estimates.items()},
                "bootstrap": {**self.units.record(self.settings),
                              "replicates": {k: list(e.replicates) for k, e in self.estimates.items()}}}


def mask_estimates(intervals: IntervalSet, values: Mapping, names: Sequence[str], prefix: str = "") -> None:
    """Channel-mean and per-channel estimates of :func:`medsynth.metrics.masks.mask_metric_values` output."""
    for key in MASK_KEYS:
        per = np.asarray(values[key], dtype=np.float64)
        intervals.means(f"{prefix}{key}", per)
        for c, name in enumerate(names):
            intervals.means(f"{prefix}{key}/{name}", per[:, c])


def window_estimates(intervals: IntervalSet, rows: Sequence[Mapping]) -> None:
    """``fd_window/<window>`` of each CT-window row with features (:func:`~medsynth.metrics.per_window_fd`),
    and ``fd_window/mean``: the mean of the windows' replicates, as the mean row is of their values."""
    found = [r for r in rows if r.get("features") is not None]
    for row in found:
        intervals.frechet(f"fd_window/{row['window']}", *row["features"])
    if found and len(found) == len(rows) - 1:
        parts = [intervals.estimates[f"fd_window/{r['window']}"] for r in found]
        reps = tuple(None if any(p.replicates[b] is None for p in parts) else
                     float(np.mean([p.replicates[b] for p in parts])) for b in range(len(parts[0].replicates)))
        low, high = percentile_interval(reps, intervals.settings.level)
        intervals.add("fd_window/mean", Estimate(float(np.mean([p.value for p in parts])), low, high, reps))
