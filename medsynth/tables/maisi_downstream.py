"""MAISI-v2's downstream tumour segmentation table (``config/paper_reported/maisi_v2_downstream.csv``) from the
3D path's tumour study (rule ``volume_downstream``, :mod:`medsynth.evaluation.volume_downstream`).

One row per tumour type x method, the paper's Dice and gain beside ours. Ours: ``real only`` (the segmenter
trained on the task's real training volumes) and the row of the 3D path's generator (plus one volume it
generated from each training volume's masks): MAISI's released rectified-flow UNet + ControlNet fine-tuned
with rectified flow, which is the paper's ``MAISI-v2`` when trained with the region-specific contrastive loss
(config ``volumes.contrastive.enabled``) and its ``ControlNet only`` without. The 3D path trains one
generator, so the other of the two rows, and the methods that cannot be trained here, say why.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .cells import measured, paired_gain
from .paper import load_reported, reported

__all__ = ["METHODS", "OTHER_ROW", "TUMOURS", "maisi_downstream"]

#: the paper's columns (tumour types), in its order
TUMOURS = ("liver_tumor", "lung_tumor", "pancreas_tumor", "colon_tumor", "bone_lesion")
#: the paper's rows -> our setting, or why the row cannot be computed by this pipeline
METHODS = {
    "real only": "real",
    "DiffTumor": "unavailable: DiffTumor (tumour inpainting with its own networks) is not part of this pipeline",
    "MAISI": "unavailable: MAISI's DDPM generator is not trained on the 3D path (the 2D path trains the DDPM"
             " baseline, not for volumes)",
    "ControlNet only": "real_synth",
    "MAISI-v2": "real_synth",
}
#: why the 3D generator's other row is empty: its generator was trained with (True) / without the loss
OTHER_ROW = {True: ("ControlNet only", "unavailable: the 3D path trains one generator, here with the contrastive"
                    " loss (volumes.contrastive.enabled): the MAISI-v2 row"),
             False: ("MAISI-v2", "unavailable: the 3D path trains one generator, here without the contrastive"
                     " loss (volumes.contrastive.enabled false): the ControlNet only row")}
NO_BONE_DATA = "unavailable: no public bone-lesion dataset is registered (neither paper names one)"


def _no_task(tumour: str) -> str:
    if tumour == "bone_lesion":
        return NO_BONE_DATA
    return (f"unavailable: no {tumour} task with data in this study (config volumes.downstream.tasks, whose"
            " select.dataset must be one of the study's datasets)")


def _scale(e: Mapping) -> str:
    return (f"train {e['n_train_real']} real + {e['n_train_synthetic']} generated volumes, {e['steps']} steps; "
            f"test {e['n_test']} real volumes")


def maisi_downstream(evaluations: Mapping[str, Mapping], paper_dir: str, contrastive: bool) -> pd.DataFrame:
    """The table from ``evaluations`` (``"<task>/<setting>"`` -> evaluation record); tasks named outside the
    paper's five come after them. ``contrastive``: whether the 3D generator trained with the contrastive loss."""
    paper = load_reported(paper_dir, "maisi_v2_downstream")
    tasks = list(dict.fromkeys([*TUMOURS, *(k.split("/")[0] for k in evaluations)]))
    other, why = OTHER_ROW[bool(contrastive)]
    methods = {**METHODS, other: why}
    rows = []
    for tumour in tasks:
        base = evaluations.get(f"{tumour}/real")
        base_dice = reported(paper, tumour, method="real only")
        for method, setting in methods.items():
            e = evaluations.get(f"{tumour}/{setting}")
            published = reported(paper, tumour, method=method)
            row = {"tumour": tumour, "method": method}
            if setting.startswith("unavailable"):
                row.update({"Dice": setting, "gain over real only (points)": ""})
            elif e is None:
                row.update({"Dice": _no_task(tumour), "gain over real only (points)": ""})
            else:
                gain = ""
                if setting != "real" and base is not None and e.get("dice") is not None \
                        and base.get("dice") is not None:
                    gain = paired_gain(e, base, "dice", 100.0 * (e["dice"] - base["dice"]), 100.0)
                row.update({"Dice": measured(e, "dice", e.get("dice")), "gain over real only (points)": gain})
            row["paper Dice"] = published
            row["paper gain (points)"] = (round(100.0 * (published - base_dice), 1)
                                          if method != "real only" and isinstance(published, float)
                                          and isinstance(base_dice, float) else "")
            row["scale"] = _scale(e) if e is not None else ""
            rows.append(row)
    return pd.DataFrame(rows)
