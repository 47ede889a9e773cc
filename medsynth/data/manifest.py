"""The study's case manifest, its patient-level splits, and the quarantine table.

``manifest.csv`` is the one index of cases every later stage reads. Splits are assigned per
patient (all cases of a patient share a split), deterministically from the seed: patients are
ordered by a seeded permutation and cut at the configured fractions. A split given by the dataset
(a ``split`` column of its prompts CSV) or fixed in config wins over the drawn one.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MANIFEST_COLUMNS = [
    "case_id", "patient_id", "dataset", "modality", "source_kind", "source", "source_sha256",
    "path", "sha256", "label_path", "shape", "spacing", "split",
]
QUARANTINE_COLUMNS = ["case_id", "patient_id", "dataset", "modality", "stage", "source", "reason"]


def shard_count(n_cases: int, shard_size: int) -> int:
    """Number of shards for ``n_cases`` (at least one, so that an empty study still has a DAG)."""
    return max(1, math.ceil(n_cases / max(1, shard_size)))


def shard_ids(n_cases: int, shard_size: int) -> list[str]:
    """Zero-padded shard ids ``000``, ``001``, ..."""
    return [f"{i:03d}" for i in range(shard_count(n_cases, shard_size))]


def shard_of(sources: pd.DataFrame, shard: str, shard_size: int) -> pd.DataFrame:
    """Rows of the sources table that belong to ``shard`` (sources are sorted by case_id)."""
    start = int(shard) * shard_size
    return sources.iloc[start : start + shard_size]


def assign_splits(patients: list[str], fractions: dict[str, float], seed: int,
                  fixed: dict[str, str] | None = None) -> dict[str, str]:
    """Map each patient to a split: seeded permutation cut at the cumulative ``fractions``.

    ``fixed`` maps patient ids to splits and removes them from the draw.
    """
    fixed = fixed or {}
    names = list(fractions)
    weights = np.array([fractions[n] for n in names], dtype=float)
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"split fractions must be non-negative and sum to > 0: {fractions}")
    weights = weights / weights.sum()
    free = sorted(p for p in set(patients) if p not in fixed)
    order = np.random.default_rng(seed).permutation(len(free))
    bounds = np.round(np.cumsum(weights) * len(free)).astype(int)
    splits = {p: fixed[p] for p in set(patients) if p in fixed}
    for rank, index in enumerate(order):
        splits[free[index]] = names[int(np.searchsorted(bounds, rank, side="right"))]
    return splits


def build_manifest(shard_tables: list[pd.DataFrame], split_cfg: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Combine ingest shard tables into (manifest of accepted cases, quarantine table)."""
    cases = pd.concat(shard_tables, ignore_index=True) if shard_tables else pd.DataFrame()
    if cases.empty:
        return pd.DataFrame(columns=MANIFEST_COLUMNS), pd.DataFrame(columns=QUARANTINE_COLUMNS)
    cases = cases.fillna("")
    ok = cases[cases["status"] == "ok"].copy()
    quarantine = cases[cases["status"] != "ok"].copy()
    quarantine["stage"] = "ingest"
    fixed = dict(split_cfg.get("fixed") or {})
    if "split" in ok.columns:  # splits given by the dataset itself
        for patient, split in zip(ok["patient_id"], ok["split"]):
            if split:
                fixed.setdefault(patient, split)
    by_case = {c: s for c, s in fixed.items() if c in set(ok["case_id"])}
    patient_fixed = {p: s for p, s in fixed.items() if p in set(ok["patient_id"])}
    for case_id, split in by_case.items():
        patient_fixed.setdefault(ok.loc[ok["case_id"] == case_id, "patient_id"].iloc[0], split)
    splits = assign_splits(ok["patient_id"].tolist(), split_cfg["fractions"],
                           seed, patient_fixed)
    ok["split"] = ok["patient_id"].map(splits)
    prompt_columns = sorted(c for c in ok.columns if c.startswith(("prompt_", "abnormality_")))  # + labels_csv
    manifest = ok[MANIFEST_COLUMNS + prompt_columns].sort_values("case_id").reset_index(drop=True)
    quarantine = quarantine.reindex(columns=QUARANTINE_COLUMNS).sort_values("case_id").reset_index(drop=True)
    return manifest, quarantine
