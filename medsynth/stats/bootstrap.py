"""Bootstrap confidence intervals over resampling units (patients, or blocks of neighbouring slices).

Slices of one patient are correlated, so an interval from resampled slices is too narrow. The unit of
resampling is the patient (:func:`resampling_units`); a study with fewer test patients than
``min_units`` resamples blocks of ``block_slices`` consecutive slices within each patient instead
(a block bootstrap: neighbouring slices, the most correlated ones, stay together), and the record
says so in ``unit``. Each replicate draws as many units as there are, with replacement, and takes
every sample of the drawn units.

Replicate ``b`` of every metric of every run scored on the same units with the same seed is computed
on the *same* resample (:meth:`ResamplingUnits.draws` depends only on the units and the seed), so a
paired effect between two runs is the elementwise difference of their replicates. The interval is the
percentile interval of the replicates at ``level``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["BootstrapSettings", "Estimate", "ResamplingUnits", "bootstrap", "bootstrap_means", "percentile_interval",
           "resampling_units"]


@dataclass(frozen=True)
class BootstrapSettings:
    """Config ``statistics.bootstrap``: resamples, interval level, seed, the patient minimum and block size."""

    resamples: int
    level: float
    seed: int
    min_units: int
    block_slices: int

    @classmethod
    def from_config(cls, cfg: Mapping) -> "BootstrapSettings":
        """From the validated ``statistics.bootstrap`` section (the schema holds the defaults)."""
        settings = cls(int(cfg["resamples"]), float(cfg["level"]), int(cfg["seed"]), int(cfg["min_units"]),
                       int(cfg["block_slices"]))
        if settings.resamples < 2 or not 0.0 < settings.level < 1.0:
            raise ValueError(f"statistics.bootstrap: resamples must be >= 2 and level in (0, 1), got {cfg}")
        return settings


@dataclass(frozen=True)
class ResamplingUnits:
    """The unit of every sample (``labels[i]``: a code 0..n_units-1), in words, and a digest of the grouping."""

    labels: np.ndarray
    unit: str
    #: the samples' identities in order (e.g. patient / case / slice), part of the digest
    samples: tuple[str, ...] = ()

    @property
    def n_units(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def digest(self) -> str:
        """Identifies the grouping and the sample order: equal digests (and seeds) mean paired replicates."""
        digest = hashlib.sha256(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        digest.update("\n".join(self.samples).encode())
        return digest.hexdigest()[:16]

    def draws(self, resamples: int, seed: int) -> list[np.ndarray]:
        """Sample positions of each replicate: ``n_units`` units drawn with replacement, all their samples.
        None with fewer than two units: one unit has no spread to resample (its interval is undefined)."""
        if self.n_units < 2:
            return []
        members = [np.flatnonzero(self.labels == u) for u in range(self.n_units)]
        rng = np.random.default_rng(seed)
        return [np.concatenate([members[u] for u in rng.integers(0, self.n_units, self.n_units)])
                for _ in range(resamples)]

    def record(self, settings: BootstrapSettings) -> dict:
        """What a metrics record says about its bootstrap (without the replicates)."""
        return {"resamples": settings.resamples, "level": settings.level, "seed": settings.seed, "unit": self.unit,
                "n_units": self.n_units, "units_digest": self.digest}


def resampling_units(index: pd.DataFrame, settings: BootstrapSettings) -> ResamplingUnits:
    """Units of the rows of ``index`` (columns ``patient_id``, optional ``case_id`` / ``slice``), in row order.

    Patients when there are at least ``settings.min_units``; otherwise blocks of ``block_slices``
    consecutive slices (by ``slice`` within each case) of each patient.
    """
    patients = index["patient_id"].astype(str).to_numpy()
    identity = tuple("/".join(str(row[c]) for c in ("patient_id", "case_id", "slice") if c in index)
                     for _, row in index.iterrows())
    codes = pd.factorize(patients, sort=False)[0]
    n_patients = int(codes.max()) + 1 if codes.size else 0
    if n_patients >= settings.min_units:
        return ResamplingUnits(codes.astype(np.int64), f"patient ({n_patients} patients)", identity)
    cases = index["case_id"].astype(str).to_numpy() if "case_id" in index else patients
    slices = pd.to_numeric(index["slice"], errors="coerce").fillna(0).to_numpy() if "slice" in index \
        else np.arange(len(index))
    keys = []
    for case in pd.unique(cases):
        rows = np.flatnonzero(cases == case)
        ordered = rows[np.argsort(slices[rows], kind="stable")]
        for start in range(0, len(ordered), settings.block_slices):
            keys.append(ordered[start:start + settings.block_slices])
    labels = np.empty(len(index), np.int64)
    for code, rows in enumerate(keys):
        labels[rows] = code
    return ResamplingUnits(labels, f"blocks of {settings.block_slices} consecutive slices ({len(keys)} blocks of "
                                   f"{n_patients} patient{'s' if n_patients != 1 else ''}: fewer than "
                                   f"{settings.min_units} patients, so the interval ignores between-patient "
                                   f"variation)", identity)


def percentile_interval(replicates: Sequence[float], level: float) -> tuple[float | None, float | None]:
    """The percentile interval of the finite replicates; ``(None, None)`` when under half are finite."""
    values = np.asarray([np.nan if v is None else v for v in replicates], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size < max(2, values.size / 2):
        return None, None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """A point value, its percentile interval and the replicates it came from."""

    value: float | None
    low: float | None
    high: float | None
    replicates: tuple[float | None, ...]

    def cells(self) -> dict:
        """``{"value", "low", "high"}`` (JSON-safe: non-finite as ``None``)."""
        return {k: _finite(getattr(self, k)) for k in ("value", "low", "high")}


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, draws: Sequence[np.ndarray],
              level: float) -> Estimate:
    """``statistic`` of all ``n`` samples, and of each draw, with the percentile interval of the draws."""
    replicates = tuple(_finite(statistic(rows)) for rows in draws)
    low, high = percentile_interval(replicates, level)
    return Estimate(_finite(statistic(np.arange(n))), low, high, replicates)


def bootstrap_means(values: np.ndarray, draws: Sequence[np.ndarray], level: float) -> Estimate:
    """Mean of per-sample ``values`` ([N] or [N, C]: channels averaged after their own NaN-skipping means)."""
    values = np.asarray(values, dtype=np.float64)

    def mean(rows: np.ndarray) -> float:
        v = values[rows]
        if v.ndim == 1:
            v = v[np.isfinite(v)]
            return float(v.mean()) if v.size else math.nan
        finite = np.isfinite(v)
        counts = finite.sum(axis=0)
        if not counts.any():
            return math.nan
        sums = np.where(finite, v, 0.0).sum(axis=0)
        return float(np.mean(sums[counts > 0] / counts[counts > 0]))

    return bootstrap(mean, len(values), draws, level)
