"""Records of a model's replicates (config ``replicates``: one training + sampling seed each) pooled into one.

The pooled record reads like a single one, so every table and claim takes it unchanged:

* each number is the mean over the replicates (equal integers, e.g. sample counts, stay as they are;
  a number missing in one replicate is missing in the pool); text and flags are replicate 0's;
* each estimate's interval is a two-level bootstrap: resample ``b`` draws the replicates with
  replacement (seeded by the bootstrap seed) and averages their own resample ``b`` of the test
  units, so the interval covers the spread between training seeds as well as the test sampling; the
  estimate also carries ``seed_sd`` (standard deviation across the replicates' values) and ``seeds``;
* records of one replicate are returned as they are (``replicates: 1`` changes no table).

Two pooled records of the same study share their seed draws and test resamples, so a difference
between them (a claim) stays paired.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsynth.seeds import derive_seed
from medsynth.stats.bootstrap import percentile_interval

__all__ = ["pool_records", "seed_draws"]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pool(values: Sequence[Any]) -> Any:
    first = values[0]
    if all(isinstance(v, Mapping) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: _pool([v[k] for v in values if k in v]) for k in keys}
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return [_pool(list(items)) for items in zip(*values)]
    if all(_number(v) for v in values):
        if all(isinstance(v, int) for v in values) and len(set(values)) == 1:
            return first
        finite = [float(v) for v in values]
        return float(np.mean(finite)) if all(math.isfinite(v) for v in finite) else None
    if any(_number(v) for v in values) and any(v is None for v in values):
        return None  # measured in some replicates only: not a value of the pool
    return first


def seed_draws(n_replicates: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples x n_replicates`` replicate indices drawn with replacement (the outer level of the bootstrap)."""
    rng = np.random.default_rng(derive_seed(int(seed), "replicates", int(n_replicates)))
    return rng.integers(0, n_replicates, size=(int(resamples), int(n_replicates)))


def _two_level(per_replicate: Sequence[Sequence[float | None]], draws: np.ndarray) -> list[float | None]:
    arrays = np.asarray([[np.nan if v is None else float(v) for v in r] for r in per_replicate], dtype=np.float64)
    out: list[float | None] = []
    for b, chosen in enumerate(draws):
        picked = arrays[chosen, b]
        out.append(float(picked.mean()) if np.all(np.isfinite(picked)) else None)
    return out


def pool_records(records: Sequence[Mapping]) -> Mapping:
    """One record from the records of a model's replicates (module docstring); ``records[0]`` is replicate 0."""
    if len(records) == 1:
        return records[0]
    pooled = _pool(list(records))
    pooled["training_seeds"] = {"replicates": len(records), "models": [r.get("model") for r in records]}
    boot = [r.get("bootstrap") or {} for r in records]
    estimates = [r.get("estimates") or {} for r in records]
    if not estimates[0]:
        return pooled
    resamples, level = int(boot[0].get("resamples") or 0), float(boot[0].get("level", 0.95))
    draws = seed_draws(len(records), resamples, int(boot[0].get("seed") or 0))
    replicates: dict[str, list] = {}
    pooled_estimates: dict[str, dict] = {}
    for key in estimates[0]:
        values = [e.get(key, {}).get("value") for e in estimates]
        reps = [(b.get("replicates") or {}).get(key) for b in boot]
        point = float(np.mean(values)) if all(_number(v) for v in values) else None
        low = high = None
        if point is not None and all(r is not None and len(r) == resamples for r in reps) and resamples:
            replicates[key] = _two_level(reps, draws)
            low, high = percentile_interval(replicates[key], level)
        sd = float(np.std(values, ddof=1)) if point is not None else None
        pooled_estimates[key] = {"value": point, "low": low, "high": high, "seed_sd": sd, "seeds": len(records)}
    pooled["estimates"] = pooled_estimates
    pooled["bootstrap"] = {**{k: v for k, v in boot[0].items() if k != "replicates"},
                           "replicates": replicates, "seeds": len(records),
                           "seed_level": "replicates drawn with replacement per resample (two-level bootstrap)"}
    return pooled
