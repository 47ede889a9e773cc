"""A claim's effect in the study: the point effect of two records' metric and its percentile interval.

Paired when both records' bootstrap blocks have the same seed, resample count and units digest: then
replicate ``i`` of both was computed on the same resample of the same units, and the effect's replicate
``i`` is ``effect(a[i], b[i])``. Otherwise the comparison is unpaired and says so: the two sets of
replicates are combined independently, ``a[i]`` with ``b[perm[i]]`` for a permutation drawn with the
claims file's ``unpaired_seed`` (over the first ``min(B_a, B_b)`` replicates).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medsynth.stats import percentile_interval

from .effects import effect
from .records import MetricEstimate, metric_estimate
from .spec import Claim

__all__ = ["ReproducedEffect", "reproduced_effect"]


@dataclass(frozen=True)
class ReproducedEffect:
    """Point effect and interval; ``unavailable`` says why the point is missing, ``no_interval`` why only
    the point is there. ``paired`` is ``None`` when no interval was computed."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    level: float | None = None
    paired: bool | None = None
    n_units: str = ""
    unavailable: str | None = None
    no_interval: str | None = None
    note: str = ""


def _replicates(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _combined(kind: str, a: MetricEstimate, b: MetricEstimate, seed: int) -> tuple[np.ndarray, bool]:
    ra, rb = _replicates(a.replicates), _replicates(b.replicates)
    if a.block.pairs_with(b.block) and ra.size == rb.size:
        return effect(kind, ra, rb), True
    n = min(ra.size, rb.size)
    perm = np.random.default_rng(seed).permutation(rb.size)[:n]
    return effect(kind, ra[:n], rb[perm]), False


def _units(a: MetricEstimate, b: MetricEstimate) -> str:
    if a.block.n_units == b.block.n_units and a.block.unit == b.block.unit:
        return f"{a.block.n_units} {a.block.unit}".strip()
    return f"a: {a.block.n_units} {a.block.unit}; b: {b.block.n_units} {b.block.unit}"


def reproduced_effect(claim: Claim, records: Mapping[str, Mapping], unpaired_seed: int) -> ReproducedEffect:
    """The claim's effect from ``records`` (``{record key: loaded record}``)."""
    rep = claim.reproduced
    if rep.absent is not None:
        return ReproducedEffect(unavailable=rep.absent)
    found = {}
    for ref in (rep.a, rep.b):
        if ref.key not in records:
            return ReproducedEffect(unavailable=f"this study does not produce {ref.key} ({ref.describe()})")
        found[ref] = metric_estimate(records[ref.key], rep.metric, ref.key)
    a, b = found[rep.a], found[rep.b]
    for e in (a, b):
        if e.missing:
            return ReproducedEffect(unavailable=e.missing)
    value = effect(claim.kind, a.value, b.value)
    if a.replicates is None or b.replicates is None:
        which = rep.a.key if a.replicates is None else rep.b.key
        return ReproducedEffect(value, no_interval=f"{rep.metric} of {which} has no bootstrap replicates "
                                                   "(a point value)")
    replicates, paired = _combined(claim.kind, a, b, unpaired_seed)
    low, high = percentile_interval([float(r) for r in replicates], a.block.level)
    note = "" if a.block.level == b.block.level else (f"interval levels differ ({a.block.level} vs "
                                                       f"{b.block.level}); the interval uses a's")
    if not paired:
        note = "; ".join(filter(None, [note, "unpaired: the records' bootstrap blocks differ (seed, resamples or "
                                             "units), replicates combined independently"]))
    n_units = _units(a, b)
    if low is None:
        return ReproducedEffect(value, level=a.block.level, paired=paired, n_units=n_units, note=note,
                                no_interval="under half of the effect's replicates are finite")
    return ReproducedEffect(value, low, high, a.block.level, paired, n_units, note=note)
