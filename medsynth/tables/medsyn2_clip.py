"""MedSyn2 Table 2 (CLIP scores T2I / I2I) and Table 3 (zero-shot classification of the 18 CT-RATE
abnormalities) from the 3D path's volume metrics record (``clip_scores``, :mod:`medsynth.evaluation.clip_scores`).

Our rows (``from``: ``ours (volumes/<run>)``): ``Real`` (the real volumes against their own reports / labels)
and ``MedSyn2`` (the study's 3D generator, its default run); then the paper's rows as published
(``config/paper_reported/medsyn2_table2.csv``, ``medsyn2_table3.csv``). A cell is a number or the short reason
it is missing ("unavailable: ...", "not applicable: ..."; the full reason is in the metrics JSON). Table 3's
values are x 100, as the paper prints them.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .builders import fd_scale
from .paper import load_reported, reported
from .render import NOT_MEASURED

__all__ = ["NO_VOLUMES", "TABLE2_COLUMNS", "TABLE3_COLUMNS", "medsyn2_table2", "medsyn2_table3"]

NO_VOLUMES = "not applicable: the study has no 3D path (config volumes.enabled false)"
#: Table 2 column -> (network in the record, entry, column of the paper's CSV)
TABLE2_COLUMNS = {"CT-CLIP T2I (%)": ("ct_clip", "t2i", "ctclip_t2i"),
                  "CT-CLIP I2I (%)": ("ct_clip", "i2i", "ctclip_i2i"),
                  "Pillar-0 T2I (%)": ("pillar0", "t2i", "pillar0_t2i"),
                  "Pillar-0 I2I (%)": ("pillar0", "i2i", "pillar0_i2i")}
#: Table 3 column -> (key of the zero-shot entry, column of the paper's CSV)
TABLE3_COLUMNS = {"accuracy (%)": "accuracy", "precision (%)": "precision", "AUROC (%)": "auroc", "F1 (%)": "f1"}
REAL_I2I = "not applicable: real volumes against themselves"


def _short(status) -> str:
    return str(status or NOT_MEASURED).split(" (")[0]


def _cell(entry: Mapping | None, key: str = "value", scale: float = 1.0):
    """``scale x entry[key]``, or the short reason it is missing."""
    entry = entry or {}
    value = entry.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return scale * float(value)
    if entry.get("status") == "ok":
        return "undefined"
    return _short(entry.get("status"))


def _ours_label(m: Mapping) -> str:
    return f"ours ({m.get('model', 'volumes')}/{m.get('run', '?')})"


def _scale(m: Mapping, what: str) -> str:
    return f"{fd_scale(m)}; {what}" if m.get("n_real") is not None else what


def _paper_rows(paper: pd.DataFrame, columns: Mapping[str, str]) -> list[dict]:
    sources = list(paper["source"]) if not paper.empty and "source" in paper.columns else []
    return [{"source": s, "from": "paper", **{c: reported(paper, k, source=s) for c, k in columns.items()},
             "scale": "as published"} for s in sources]


def medsyn2_table2(m: Mapping | None, paper_dir) -> pd.DataFrame:
    """MedSyn2 Table 2: CLIP score (%) T2I / I2I per CLIP network, ours (Real, the 3D generator) then the paper's.

    ``m``: the volume metrics record of the 3D generator's default run, ``None`` when the study has no 3D path."""
    paper = load_reported(paper_dir, "medsyn2_table2")
    rows = []
    if m is None:
        for source in ("Real", "MedSyn2"):
            rows.append({"source": source, "from": "ours", **{c: NO_VOLUMES for c in TABLE2_COLUMNS},
                         "scale": "no volumes"})
    else:
        scores = m.get("clip_scores") or {}
        ct = scores.get("ct_clip") or {}
        missing = {"status": "not measured: the volume metrics record has no clip_scores (rerun rule volume_metrics)"}
        n = f"{ct.get('n_reports', 0)} of {ct.get('n_volumes', m.get('n_generated'))} volumes with a report"
        for source, entries in (("Real", ct.get("real") or {}), ("MedSyn2", ct)):
            row = {"source": source, "from": _ours_label(m)}
            for column, (net, key, _) in TABLE2_COLUMNS.items():
                if not scores:
                    row[column] = _cell(missing)
                elif source == "Real" and key == "i2i":
                    row[column] = REAL_I2I
                elif net == "pillar0":
                    row[column] = _cell(scores.get("pillar0"), key)
                else:
                    row[column] = _cell(entries.get(key))
            row["scale"] = _scale(m, n)
            rows.append(row)
    rows += _paper_rows(paper, {c: k for c, (_, _, k) in TABLE2_COLUMNS.items()})
    return pd.DataFrame(rows, columns=["source", "from", *TABLE2_COLUMNS, "scale"])


def medsyn2_table3(m: Mapping | None, paper_dir) -> pd.DataFrame:
    """MedSyn2 Table 3: CT-CLIP zero-shot classification of the 18 CT-RATE abnormalities (mean over them, x 100),
    ours on the real and the generated volumes, then the paper's rows."""
    paper = load_reported(paper_dir, "medsyn2_table3")
    rows = []
    if m is None:
        for source in ("Real", "MedSyn2"):
            rows.append({"source": source, "from": "ours", **{c: NO_VOLUMES for c in TABLE3_COLUMNS},
                         "scale": "no volumes"})
    else:
        ct = (m.get("clip_scores") or {}).get("ct_clip")
        missing = {"status": "not measured: the volume metrics record has no clip_scores (rerun rule volume_metrics)"}
        for source, entry in (("Real", ((ct or {}).get("real") or {}).get("zero_shot")),
                              ("MedSyn2", (ct or {}).get("zero_shot"))):
            entry = entry if ct is not None else missing
            n_scored = (entry or {}).get("n_scored")
            what = "mean over the abnormalities with both classes" + (f" ({n_scored} of 18)" if n_scored else "")
            rows.append({"source": source, "from": _ours_label(m),
                         **{c: _cell(entry, k, 100.0) for c, k in TABLE3_COLUMNS.items()}, "scale": _scale(m, what)})
    rows += _paper_rows(paper, TABLE3_COLUMNS)
    return pd.DataFrame(rows, columns=["source", "from", *TABLE3_COLUMNS, "scale"])
