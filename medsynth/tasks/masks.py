"""Tasks of rules/masks.smk: masks, quarantine, mask_figure."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medsynth.cases import read_shard_table
from medsynth.data.manifest import QUARANTINE_COLUMNS
from medsynth.figures import display, mask_overlay
from medsynth.fsutil import write_csv_atomic
from medsynth.masks.conditions import ConditionSpec
from medsynth.masks.stage import masks_shard
from medsynth.settings import section
from medsynth.tasks import Job, task
from medsynth.tasks.preprocess import registered_cases


def _read(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def masks_for_shard(registered_dir: str, out_dir: str, masks_cfg: dict) -> pd.DataFrame:
    """Pseudo-masks, condition masks and mask QC of one registered shard."""
    masks_cfg = section("masks", masks_cfg)
    registered = read_shard_table(registered_dir)
    specs = [ConditionSpec.from_config(c) for c in masks_cfg["conditions"]]
    return masks_shard(registered, out_dir, masks_cfg["segmenters"], masks_cfg["by_modality"], specs,
                       unknown_labels=masks_cfg["unknown_labels"], by_dataset=masks_cfg["by_dataset"])


def combine_quarantine(ingest_csv: str, registered_dirs: list[str], masks_dirs: list[str], out_csv: str) -> pd.DataFrame:
    """All quarantined cases of every stage in one table."""
    parts = [_read(ingest_csv)]
    for stage, dirs in (("registration", registered_dirs), ("masks", masks_dirs)):
        for d in dirs:
            rows = read_shard_table(d)
            if "status" in rows:
                parts.append(rows[rows["status"] == "quarantined"].assign(stage=stage))
    combined = pd.concat(parts, ignore_index=True).reindex(columns=QUARANTINE_COLUMNS).fillna("")
    combined = combined.sort_values(["stage", "case_id"]).reset_index(drop=True)
    write_csv_atomic(combined, out_csv)
    return combined


def draw_mask_figure(registered_dirs: list[str], masks_dirs: list[str], out_png: str, figures_cfg: dict, intensity_cfg: dict) -> None:
    """Condition masks over registered images (the first ``figures.cases`` accepted cases)."""
    figures_cfg = section("figures", figures_cfg)
    window = tuple(intensity_cfg["windows"][figures_cfg["ct_window"]])
    names = json.loads((Path(masks_dirs[0]) / "conditions.json").read_text())
    masks = pd.concat([read_shard_table(d) for d in masks_dirs], ignore_index=True)
    masks = masks[masks["status"] == "ok"].sort_values("case_id").head(int(figures_cfg["cases"]))
    registered = registered_cases(registered_dirs).set_index("case_id")
    rows = []
    for case in masks.to_dict("records"):
        image = np.asarray(nib.load(registered.loc[case["case_id"], "registered_path"]).dataobj, np.float32)
        rows.append({"case_id": case["case_id"], "image": display(image, case["modality"], window),
                     "masks": np.asarray(nib.load(case["conditions_path"]).dataobj, np.uint8)})
    mask_overlay(rows, names, out_png)


@task()
def masks(job: Job) -> None:
    """Pseudo-masks, condition masks and mask QC of one registered shard."""
    masks_for_shard(job.input.registered, job.output.shard, job.params.masks)


@task()
def quarantine(job: Job) -> None:
    """One QC table of every case left out, by stage, with its reason."""
    combine_quarantine(job.input.ingest, job.input.registered, job.input.masks, job.output.table)


@task()
def mask_figure(job: Job) -> None:
    """Condition masks over registered images, for the report."""
    draw_mask_figure(job.input.registered, job.input.masks, job.output.figure, job.params.figures, job.params.intensity)
