"""The claims table: one row per claim, the paper's effect beside the study's, and a verdict.

Columns: what is claimed and where; the published effect recomputed from the paper's own table and its
check against the text (:mod:`.published`); the reproduced effect with its interval, paired or not
(:mod:`.reproduced`); the verdict and the reason for it (:mod:`.verdict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .effects import NO_EFFECT
from .published import published_effect
from .reproduced import ReproducedEffect, reproduced_effect
from .spec import Claim, Claims
from .verdict import CONTRADICTED, NOT_RESOLVABLE, REPRODUCED, verdict

__all__ = ["COLUMNS", "claim_row", "claims_table"]

COLUMNS = ["id", "paper", "claim", "where", "comparison", "direction", "tolerance", "published rows",
           "published effect", "published supports claim", "text says", "published check", "metric",
           "reproduced a", "reproduced b", "reproduced effect", "low", "high", "level", "paired", "n units",
           "verdict", "reason", "tolerance why", "note"]

_SUPPORT = {REPRODUCED: "yes", CONTRADICTED: "no", NOT_RESOLVABLE: "within the margin"}
_KIND_WORDS = {"difference": "a - b", "ratio": "a / b", "relative": "(a - b) / b"}


def _comparison(claim: Claim) -> str:
    return f"{claim.kind}: {_KIND_WORDS[claim.kind]} (no effect = {NO_EFFECT[claim.kind]:g})"


def _verdict(claim: Claim, rep: ReproducedEffect) -> tuple[str, str]:
    if rep.unavailable:
        return NOT_RESOLVABLE, rep.unavailable
    if rep.no_interval:
        return NOT_RESOLVABLE, rep.no_interval
    word, why = verdict(claim.direction, claim.tolerance, claim.kind, rep.low, rep.high)
    level = f"{rep.level:.0%} interval " if rep.level is not None else "interval "
    return word, f"{level}{why}"


def claim_row(claim: Claim, records: Mapping[str, Mapping], paper_dir: str | Path, unpaired_seed: int) -> dict:
    """The table row of one claim."""
    pub = published_effect(claim, paper_dir)
    rep = reproduced_effect(claim, records, unpaired_seed)
    supports = ""
    if pub.value is not None:
        supports = _SUPPORT[verdict(claim.direction, claim.tolerance, claim.kind, pub.value, pub.value)[0]]
    unavailable = f"unavailable: {rep.unavailable or rep.no_interval}"
    word, reason = _verdict(claim, rep)
    refs = claim.reproduced
    return {
        "id": claim.id, "paper": claim.paper, "claim": claim.claim, "where": claim.where,
        "comparison": _comparison(claim), "direction": claim.direction, "tolerance": claim.tolerance,
        "published rows": pub.rows, "published effect": pub.value if pub.value is not None else "not derivable",
        "published supports claim": supports,
        "text says": claim.published.text.says if claim.published.text else "",
        "published check": pub.check, "metric": refs.metric or "",
        "reproduced a": refs.a.describe() if refs.a else "", "reproduced b": refs.b.describe() if refs.b else "",
        "reproduced effect": rep.value if rep.value is not None else unavailable,
        "low": rep.low if rep.low is not None else "",
        "high": rep.high if rep.high is not None else "",
        "level": rep.level if rep.level is not None else "",
        "paired": {True: "paired", False: "unpaired", None: ""}[rep.paired], "n units": rep.n_units,
        "verdict": word, "reason": reason, "tolerance why": claim.tolerance_why,
        "note": "; ".join(filter(None, [claim.note, rep.note])),
    }


def claims_table(claims: Claims, records: Mapping[str, Mapping], paper_dir: str | Path) -> pd.DataFrame:
    """The claims table (:data:`COLUMNS`): ``records`` maps :attr:`RecordRef.key` to a loaded record
    (see :func:`medsynth.claims.records.record_paths`), ``paper_dir`` holds the papers' CSV tables."""
    return pd.DataFrame([claim_row(c, records, paper_dir, claims.unpaired_seed) for c in claims], columns=COLUMNS)
