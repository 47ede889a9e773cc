"""The study's records a set of claims reads, and one metric's estimate taken out of a record.

A record is a metrics file (``results/<study>/metrics/<model>/<run>.json``), a downstream evaluation
(``results/<study>/downstream/<setting>/evaluation.json``) or a tumour task's evaluation
(``results/<study>/volumes/downstream/<task>/<setting>/evaluation.json``), all with

- ``estimates``: ``{metric: {"value", "low", "high"}}``;
- ``bootstrap``: ``{"resamples", "level", "seed", "unit", "n_units", "units_digest",
  "replicates": {metric: [B floats or null]}}``.

Records are passed around by :attr:`RecordRef.key` (``metrics/victr``, ``metrics/victr/tweedie-4``,
``downstream/real``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .spec import Claim, RecordRef

__all__ = ["MetricEstimate", "load_records", "metric_estimate", "record_paths", "record_refs"]


def record_refs(claims: Iterable[Claim]) -> list[RecordRef]:
    """Every record the claims compare, once each, in order of first use."""
    refs = [ref for c in claims for ref in (c.reproduced.a, c.reproduced.b) if ref is not None]
    return list(dict.fromkeys(refs))


def record_paths(claims: Iterable[Claim], metrics_path: Callable[[str, str | None], str],
                 downstream_path: Callable[[str], str],
                 tumour_path: Callable[[str, str], str] = lambda task, setting: "",
                 reference_path: Callable[[str], str] = lambda reference: "") -> dict[str, str]:
    """``{record key: file}`` of every record the claims need, e.g. for a Snakemake input function with
    ``metrics_path=study.metrics_json`` (``run=None``: the default run), ``downstream_path=study.downstream_json``,
    ``tumour_path=study.tumour_json`` and ``reference_path`` (``<task>.<name>`` -> its file; an empty path: a
    record the study does not produce)."""
    def path(ref: RecordRef) -> str:
        if ref.reference is not None:
            return reference_path(ref.reference)
        if ref.task is not None:
            return tumour_path(ref.task, ref.setting)
        if ref.setting is not None:
            return downstream_path(ref.setting)
        return metrics_path(ref.model, ref.run)

    return {ref.key: path(ref) for ref in record_refs(claims)}


def load_records(paths: Mapping[str, str | Path]) -> dict[str, dict]:
    """``{record key: loaded JSON}`` from :func:`record_paths`' mapping."""
    out = {}
    for key, path in paths.items():
        with open(path) as f:
            out[key] = json.load(f)
    return out


@dataclass(frozen=True)
class Block:
    """A record's bootstrap block: which resample of which units its replicates come from."""

    resamples: int
    level: float
    seed: int
    unit: str
    n_units: int
    units_digest: str

    def pairs_with(self, other: "Block") -> bool:
        """Replicate b of both is computed on the same resample of the same units."""
        return (self.seed, self.resamples, self.units_digest) == (other.seed, other.resamples, other.units_digest)


@dataclass(frozen=True)
class MetricEstimate:
    """One metric of one record: the point value, its replicates (``None`` if it has none) and its block;
    ``missing`` says why the point value is absent."""

    value: float | None
    replicates: tuple[float | None, ...] | None
    block: Block | None
    missing: str | None = None


def _status(record: Mapping, metric: str) -> str:
    """The record's own words on a metric it could not compute (e.g. fid's ``status``), if any."""
    section = record.get(metric)
    status = section.get("status") if isinstance(section, Mapping) else None
    return f": {status}" if status else ""


def metric_estimate(record: Mapping, metric: str, key: str) -> MetricEstimate:
    """``metric`` of the record named ``key`` (the key only words the reasons)."""
    estimates = record.get("estimates")
    if str(record.get("status", "")).startswith("unavailable"):  # a record of what could not be computed
        return MetricEstimate(None, None, None, f"{key}: {record['status']}")
    if not isinstance(estimates, Mapping):
        return MetricEstimate(None, None, None, f"{key} has no estimates (a record made before intervals)")
    point = estimates.get(metric)
    value = point.get("value") if isinstance(point, Mapping) else None
    if value is None:
        why = "is null" if isinstance(point, Mapping) else "is not estimated"
        return MetricEstimate(None, None, None, f"{metric} of {key} {why}{_status(record, metric)}")
    boot = record.get("bootstrap")
    if not isinstance(boot, Mapping):
        return MetricEstimate(float(value), None, None)
    block = Block(int(boot["resamples"]), float(boot["level"]), int(boot["seed"]), str(boot.get("unit", "")),
                  int(boot["n_units"]), str(boot["units_digest"]))
    replicates = (boot.get("replicates") or {}).get(metric)
    if replicates is None or all(r is None for r in replicates):
        return MetricEstimate(float(value), None, block)
    return MetricEstimate(float(value), tuple(replicates), block)
