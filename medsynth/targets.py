"""Target tasks of stage 2: ViCTr fine-tunes one stage 2 per target dataset (BTCV CT, AMOS MRI, CirrMRI600+)
and reports each as a column of its tables.

Config ``targets`` names each target's slices (``{btcv: {select: {dataset: [btcv]}}}``); a stage-2 variant
with ``target: btcv`` trains on its ``select`` restricted to those slices, and everything measured on the
model (its condition sets, hence its samples, metrics and synthetic downstream data) is restricted the
same way. Torch-free: the workflow calls it while it builds the DAG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["restrict", "target_select"]


def restrict(select: Mapping[str, Sequence], other: Mapping[str, Sequence]) -> dict:
    """Both selections at once (index column -> allowed values): a column named by both keeps the values
    in both, in ``select``'s order; one named by either keeps its values. Other keys of ``select`` (a
    condition set's options) are kept. An empty intersection is a ``ValueError`` naming the column."""
    out = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in select.items()}
    for column, allowed in other.items():
        if column not in out:
            out[column] = list(allowed)
            continue
        both = [v for v in out[column] if str(v) in {str(a) for a in allowed}]
        if not both:
            raise ValueError(f"select: {column} {list(out[column])} and the target's {list(allowed)} have no value in "
                             "common, so nothing would be selected")
        out[column] = both
    return out


def target_select(targets: Mapping[str, Mapping], name: str | None, where: str = "target") -> dict:
    """The ``select`` of target ``name`` (config ``targets.<name>``); ``{}`` for no target (None)."""
    if name is None:
        return {}
    if name not in targets:
        raise ValueError(f"{where} = {name!r} is not in config `targets` ({sorted(targets) or 'none defined'})")
    return dict(targets[name]["select"])
