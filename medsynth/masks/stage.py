"""The masks stage: pseudo-masks for each registered case, condition channels, and mask QC.

Each modality is routed to one segmenter (``masks.by_modality``). The ``dataset`` backend uses the
label map that came with the case (registered with nearest neighbour), with structure names
from a TotalSegmentator class map or an explicit mapping. Output per case: the label map and a 4D
condition-mask volume (X, Y, Z, C) of binary channels; a case failing mask QC is quarantined.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medsynth.fsutil import atomic_dir
from medsynth.io.volume import write_nifti
from medsynth.masks.backend import Segmentation, make_segmenter
from medsynth.masks.conditions import ConditionSpec, condition_masks
from medsynth.preprocess.stage import remove_case_files

log = logging.getLogger(__name__)

SHARD_TABLE = "cases.csv"


def structure_names(spec: str | dict) -> dict[int, str]:
    """Label id -> name: a TotalSegmentator class map name (e.g. ``total_mr``) or an explicit mapping."""
    if isinstance(spec, dict):
        return {int(k): str(v) for k, v in spec.items()}
    from totalsegmentator.map_to_binary import class_map

    if spec not in class_map:
        raise ValueError(f"unknown class map {spec!r} (masks.segmenters.<name>.class_map)")
    return dict(class_map[spec])


class _Segmenters:
    """Lazily built segmenters, one per configured name."""

    def __init__(self, configs: dict[str, dict]):
        self.configs = configs
        self.built: dict = {}

    def segment(self, name: str, case: dict) -> Segmentation:
        cfg = self.configs[name]
        image = nib.load(case["registered_path"])
        if cfg.get("backend") == "dataset":
            if not case.get("registered_label_path"):
                raise ValueError(f"segmenter {name!r} uses the dataset's label maps, but this case has none")
            return Segmentation(nib.load(case["registered_label_path"]), structure_names(cfg["class_map"]))
        if name not in self.built:
            self.built[name] = make_segmenter(cfg)
        return self.built[name].segment(image, case["modality"])


def masks_shard(registered: pd.DataFrame, out_dir: str | Path, segmenters: dict[str, dict], by_modality: dict[str, str],
                specs: list[ConditionSpec], progress: bool = True) -> pd.DataFrame:
    """Segment the registered cases of a shard and derive their condition masks (folder written atomically)."""
    out_dir = Path(out_dir)
    pool = _Segmenters(segmenters)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for case in tqdm(registered.to_dict("records"), desc=f"masks {out_dir.name}", disable=not progress):
            row = {k: case[k] for k in ("case_id", "patient_id", "dataset", "modality", "split")}
            if case["status"] != "ok":
                continue  # already quarantined upstream
            try:
                name = by_modality.get(case["modality"])
                if name is None:
                    raise ValueError(f"no segmenter for modality {case['modality']} (masks.by_modality)")
                seg = pool.segment(name, case)
                labels = np.asarray(seg.labels.dataobj).astype(np.int16)
                voxel_ml = float(np.prod(np.linalg.norm(seg.labels.affine[:3, :3], axis=0))) / 1000.0
                result = condition_masks(labels, seg.names, specs, voxel_ml)
                write_nifti(nib.Nifti1Image(labels, seg.labels.affine), tmp / "labels" / f"{case['case_id']}.nii.gz", np.int16)
                channels = np.moveaxis(result.channels, 0, -1)
                write_nifti(nib.Nifti1Image(channels, seg.labels.affine), tmp / "conditions" / f"{case['case_id']}.nii.gz", np.uint8)
                row.update(segmenter=name, labels_path=str(out_dir / "labels" / f"{case['case_id']}.nii.gz"),
                           conditions_path=str(out_dir / "conditions" / f"{case['case_id']}.nii.gz"),
                           structures=json.dumps(sorted(set(seg.names[i] for i in np.unique(labels) if i in seg.names))),
                           **{f"ml_{k}": round(v, 2) for k, v in result.volumes_ml.items()})
                if result.reasons:
                    remove_case_files(tmp, case["case_id"])
                    row.update(status="quarantined", reason="; ".join(result.reasons), labels_path="", conditions_path="")
                else:
                    row.update(status="ok", reason="")
            except Exception as err:
                log.error("masks of %s failed:\n%s", case["case_id"], traceback.format_exc())
                remove_case_files(tmp, case["case_id"])
                row.update(status="quarantined", reason=f"segmentation failed: {err}")
            rows.append(row)
        table = pd.DataFrame(rows)
        (tmp / "conditions.json").write_text(json.dumps([s.name for s in specs]))
        table.to_csv(tmp / SHARD_TABLE, index=False)
    return table
