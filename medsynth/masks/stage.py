"""The masks stage: pseudo-masks for each registered case, condition channels, and mask QC.

Each modality is routed to one segmenter (``masks.by_modality``). The ``dataset`` backend uses the
label map that came with the case (registered with nearest neighbour), with structure names
from a TotalSegmentator class map or an explicit mapping. Output per case: the label map and a 4D
condition-mask volume (X, Y, Z, C) of binary channels; a case failing mask QC is quarantined.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medsynth.cases import CaseRejected, process_cases
from medsynth.io.volume import write_nifti
from medsynth.masks.backend import Segmentation, make_segmenter
from medsynth.masks.conditions import ConditionSpec, condition_masks

log = logging.getLogger(__name__)



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


def unknown_label_ids(labels: np.ndarray, names: dict[int, str]) -> list[int]:
    """Label ids present in ``labels`` that the class map ``names`` does not name (background 0 aside)."""
    return sorted(int(i) for i in np.unique(labels) if i != 0 and int(i) not in names)


def masks_shard(registered: pd.DataFrame, out_dir: str | Path, segmenters: dict[str, dict], by_modality: dict[str, str],
                specs: list[ConditionSpec], progress: bool = True, unknown_labels: str = "report") -> pd.DataFrame:
    """Segment the registered cases of a shard and derive their condition masks (folder written atomically).

    Label ids outside the segmenter's class map are listed in the row (``unknown_label_ids``);
    ``unknown_labels="quarantine"`` (config ``masks.unknown_labels``) also quarantines the case.
    """
    out_dir = Path(out_dir)
    pool = _Segmenters(segmenters)

    def segment(case: dict, tmp: Path) -> dict:
        name = by_modality.get(case["modality"])
        if name is None:
            raise ValueError(f"no segmenter for modality {case['modality']} (masks.by_modality)")
        seg = pool.segment(name, case)
        labels = np.asarray(seg.labels.dataobj).astype(np.int16)
        voxel_ml = float(np.prod(np.linalg.norm(seg.labels.affine[:3, :3], axis=0))) / 1000.0
        result = condition_masks(labels, seg.names, specs, voxel_ml)
        unknown = unknown_label_ids(labels, seg.names)
        produced = {"segmenter": name, "labels_path": str(tmp / "labels" / f"{case['case_id']}.nii.gz"),
                    "conditions_path": str(tmp / "conditions" / f"{case['case_id']}.nii.gz"),
                    "structures": json.dumps(sorted(set(seg.names[i] for i in np.unique(labels) if i in seg.names))),
                    "unknown_label_ids": json.dumps(unknown) if unknown else "",
                    **{f"ml_{k}": round(v, 2) for k, v in result.volumes_ml.items()}}
        if unknown:
            message = (f"label ids {unknown} are not in the class map of segmenter {name!r}"
                       f" (masks.segmenters.{name}.class_map)")
            if unknown_labels == "quarantine":
                raise CaseRejected(f"{message}; masks.unknown_labels: quarantine",
                                   {**produced, "labels_path": "", "conditions_path": ""})
            log.warning("%s: %s; they are left out of every condition (masks.unknown_labels: report)",
                        case["case_id"], message)
        if result.reasons:  # mask QC failed: quarantined with what was measured, without files
            raise CaseRejected("; ".join(result.reasons), {**produced, "labels_path": "", "conditions_path": ""})
        write_nifti(nib.Nifti1Image(labels, seg.labels.affine), produced["labels_path"], np.int16)
        channels = np.moveaxis(result.channels, 0, -1)
        write_nifti(nib.Nifti1Image(channels, seg.labels.affine), produced["conditions_path"], np.uint8)
        return produced

    return process_cases(
        [case for case in registered.to_dict("records") if case["status"] == "ok"],  # the others: quarantined upstream
        out_dir, segment,
        columns=("case_id", "patient_id", "dataset", "modality", "split"),
        error_reason=lambda err: f"segmentation failed: {err}",
        path_keys=("labels_path", "conditions_path"), stage="masks", progress=progress,
        finish=lambda tmp: (tmp / "conditions.json").write_text(json.dumps([s.name for s in specs])))
