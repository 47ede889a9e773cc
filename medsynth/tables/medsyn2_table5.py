"""MedSyn2 Table 5: GGO segmentation on SemiSeg trained on real / synthesized / combined data, and the
published models set beside them (Inf-Net, MedPSeg) where a reference segmenter scores them here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medsynth.names import parse_setting

from .cells import downstream_scale, measured, value_or_reason
from .paper import load_reported, reported

if TYPE_CHECKING:  # the study object is only passed in
    from medsynth.study import Study

__all__ = ["NO_REFERENCE", "REFERENCE_KEY", "medsyn2_table5", "table5_inputs", "table5_params"]

#: the input key of a reference's record in the table's inputs (``reference:<name>``)
REFERENCE_KEY = "reference:{}"
#: our cells of a paper row no setting or configured reference computes
NO_REFERENCE = "not computed: no reference segmenter configured for this row"
_PAPER_ROWS = {"real": "real", "synth_only": "synthesized", "real_synth": "combined"}


def _short(status: str) -> str:
    """``unavailable: <why>`` cut before its hint (the record keeps the whole message)."""
    head, _, why = str(status).partition(": ")
    return f"{head}: {why.split(' (')[0].split(': ')[0].split('. ')[0]}" if why else head


def _cells(e: Mapping, unit: str) -> dict:
    mean = e.get("mean", {})
    return {"dice (%)": measured(e, "mdsc", value_or_reason(e, "mdsc", 100.0), 100.0),
            "jaccard (%)": measured(e, "jaccard", value_or_reason(mean, "jaccard", 100.0), 100.0),
            f"hd95 ({unit})": measured(e, "mhd95", e["mhd95"]),
            f"asd ({unit})": measured(e, "asd", value_or_reason(mean, "asd"))}


def _row(paper: pd.DataFrame, setting: str, paper_row: str, n_images, ours: dict, scale: str) -> dict:
    """One row: each of our cells (``_cells``' columns, in order) beside the paper's."""
    row = {"setting": setting, "paper training_data": paper_row, "n_images": n_images}
    for (column, value), theirs in zip(ours.items(), ("dice", "jaccard", "hd95_px", "asd_px")):
        row[column] = value
        row[f"paper {theirs.replace('_px', '')} ({'px' if theirs.endswith('_px') else '%'})"] = reported(
            paper, theirs, training_data=paper_row)
    row["scale"] = scale
    return row


def medsyn2_table5(loaded: Mapping[str, Mapping], paper_dir: str | Path, references: Mapping[str, str] | None = None
                   ) -> pd.DataFrame:
    """The trained settings' rows (every record of ``loaded`` but the references'), then one row per reference
    (``references``: name -> the paper row it stands beside; its record is ``loaded["reference:<name>"]``),
    then the paper's other rows with :data:`NO_REFERENCE` as ours."""
    paper = load_reported(paper_dir, "medsyn2_table5")
    references = dict(references or {})
    keys = {REFERENCE_KEY.format(name) for name in references}
    settings = {k: e for k, e in loaded.items() if k not in keys}
    unit = next((str(e["hd95_unit"]) for e in loaded.values() if e.get("hd95_unit")), "pixel")
    rows = []
    for setting, e in settings.items():
        rows.append(_row(paper, setting, _PAPER_ROWS.get(parse_setting(setting)[1], setting),
                         e["n_train_real"] + e["n_train_synthetic"], _cells(e, unit), downstream_scale(e)))
    for name, paper_row in references.items():
        e = loaded[REFERENCE_KEY.format(name)]
        computed = e.get("status") == "computed"
        ours = _cells(e, unit) if computed else dict.fromkeys(_cells({"mhd95": None}, unit), _short(e["status"]))
        rows.append(_row(paper, f"reference-{name}", paper_row or name, "pretrained", ours,
                         f"pretrained {e['backend']} (masks.segmenters.{e['segmenter']}), not trained here; test "
                         f"{e['n_test']} real slices"))
    done = {row["paper training_data"] for row in rows}
    for paper_row in paper.get("training_data", pd.Series(dtype=str)).astype(str):
        if paper_row not in done and paper_row not in _PAPER_ROWS.values():
            rows.append(_row(paper, "", paper_row, "", dict.fromkeys(_cells({"mhd95": None}, unit), NO_REFERENCE), ""))
    return pd.DataFrame(rows)


def table5_inputs(study: "Study") -> dict[str, str]:
    """The table's records: the task's trained settings (``tables.medsyn2_table5_task``) and its references'."""
    task = study.tables["medsyn2_table5_task"]
    inputs = {st: study.downstream_json(st) for st in study.downstream_settings("real", "real_synth", "synth_only",
                                                                                task=task)}
    inputs.update({REFERENCE_KEY.format(name): path for name, path in study.downstream_references(task).items()})
    return inputs


def table5_params(study: "Study") -> dict:
    """``references``: reference name -> the paper row it stands beside (``downstream.tasks.<task>.references``)."""
    refs = study.reference_configs(study.tables["medsyn2_table5_task"])
    return {"references": {name: ref.get("paper_row") or name for name, ref in refs.items()}}
