"""The calibration table: the reference rows of rule ``calibration`` beside the models' own numbers.

Rows of kind ``reference`` (:mod:`medsynth.evaluation.calibration`: the held-out slices themselves,
real training slices, the VAE's reconstructions, degraded copies, shuffled masks) and of kind
``model`` (each model's default run, from its metrics record), with the same extractor and sample
count, so a reader sees where each model sits between the floor and the ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .cells import fd_value, measured
from .render import NOT_MEASURED

__all__ = ["calibration_table"]


def _fd_column(calibration: Mapping) -> str:
    return f"FD ({calibration.get('extractor', 'self-trained encoder')})"


def calibration_table(calibration: Mapping, models: Mapping[str, Mapping]) -> pd.DataFrame:
    """Reference rows then model rows; ``models``: model name -> metrics record of its default run."""
    fd = _fd_column(calibration)
    rows = []
    for r in calibration["rows"]:
        name = r["name"]
        rows.append({"kind": "reference", "row": name, "what": r["what"],
                     fd: measured(calibration, f"{name}/fd_self", r["fd_self"]) if "fd_self" in r else "",
                     "re-segmentation Dice (%)": measured(calibration, f"{name}/dice", 100.0 * r["dice"], 100.0)
                     if r.get("dice") is not None else "",
                     "SSIM": measured(calibration, f"{name}/ssim", r["ssim"]) if "ssim" in r else "",
                     "PSNR (dB)": measured(calibration, f"{name}/psnr", r["psnr"]) if "psnr" in r else "",
                     "n": r["n"]})
    for model, m in models.items():
        dice = ((m.get("mask_fidelity") or {}).get("mean_generated_vs_gt") or {}).get("dice")
        pairs = m.get("pairs") or {}
        rows.append({"kind": "model", "row": f"{model} ({m['run']})", "what": "generated for the held-out masks",
                     fd: fd_value(m, "fd_self"),
                     "re-segmentation Dice (%)": measured(m, "dice", 100.0 * dice, 100.0) if dice is not None
                     else NOT_MEASURED,
                     "SSIM": measured(m, "ssim", pairs.get("ssim")), "PSNR (dB)": measured(m, "psnr", pairs.get("psnr")),
                     "n": m["n_generated"]})
    return pd.DataFrame(rows)
