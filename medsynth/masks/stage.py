"""The masks stage: pseudo-masks for each registered case, condition channels, and mask QC.

Each case goes to one segmenter: its dataset's (``masks.by_dataset``) if it has one, else its
modality's (``masks.by_modality``). The ``dataset`` backend uses the label map that came with the case
(registered with nearest neighbour), with structure names from a TotalSegmentator class map or an
explicit mapping; with ``base: <segmenter>`` that label map is painted over the base segmenter's
(:mod:`medsynth.masks.overlay`: the dataset's ids + 1000). Any other segmenter may have a ``base`` too
(e.g. TotalSegmentator's effusion task painted over its ``total`` lobes), optionally painting only the
classes named by ``paint``; a base may have its own base (a chain; each layer's ids + 1000 x its depth).
A dataset segmenter cannot be a base, and a cycle of bases is refused. Output per case: the label map and a 4D
condition-mask volume (X, Y, Z, C) of binary channels; a case failing mask QC is quarantined.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medsynth.cases import CaseRejected, process_cases
from medsynth.io.volume import write_nifti
from medsynth.masks.backend import Segmentation, make_segmenter
from medsynth.masks.conditions import ConditionSpec, condition_masks
from medsynth.masks.overlay import DATASET_LABEL_OFFSET, chain_offset, overlay_segmentation, painted_only

log = logging.getLogger(__name__)



def structure_names(spec: str | dict) -> dict[int, str]:
    """Label id -> name: a TotalSegmentator class map name (e.g. ``total_mr``) or an explicit mapping."""
    if isinstance(spec, dict):
        return {int(k): str(v) for k, v in spec.items()}
    from totalsegmentator.map_to_binary import class_map

    if spec not in class_map:
        raise ValueError(f"unknown class map {spec!r} (masks.segmenters.<name>.class_map)")
    return dict(class_map[spec])


def chain_depth(segmenters: Mapping[str, dict], name: str) -> int:
    """Number of segmenters below ``name`` in its chain of ``base`` keys (0: no base); a cycle is refused."""
    seen, current = [name], name
    while segmenters[current].get("base"):
        current = segmenters[current]["base"]
        if current in seen:
            raise ValueError(f"masks.segmenters.{name}.base: the bases form a cycle ({' -> '.join([*seen, current])})")
        if current not in segmenters:
            raise ValueError(f"masks.segmenters.{seen[-1]}.base: no segmenter {current!r} in masks.segmenters")
        seen.append(current)
    return len(seen) - 1


def check_routing(segmenters: Mapping[str, dict], by_dataset: Mapping[str, str]) -> None:
    """Refuse ``masks.by_dataset`` entries naming no configured segmenter and ``base`` / ``paint`` keys that
    cannot work (unknown segmenter, a ``dataset`` base, a cycle of bases, ``paint`` without ``base``).
    ``masks.by_modality`` is checked when a case needs it, as before (a modality a study has no case of may
    name anything)."""
    for dataset, name in by_dataset.items():
        if name not in segmenters:
            raise ValueError(f"masks.by_dataset.{dataset}: no segmenter {name!r} in masks.segmenters "
                             f"({', '.join(sorted(segmenters))})")
    for name, cfg in segmenters.items():
        base = cfg.get("base")
        if not base:
            if cfg.get("paint") is not None:
                raise ValueError(f"masks.segmenters.{name}.paint: only a segmenter with a base paints over one")
            continue
        if base not in segmenters:
            raise ValueError(f"masks.segmenters.{name}.base: no segmenter {base!r} in masks.segmenters")
        if segmenters[base].get("backend") == "dataset":
            raise ValueError(f"masks.segmenters.{name}.base: {base!r} reads the dataset's label maps too; "
                             "the base must segment the image (classical, totalsegmentator, lungmask)")
        chain_depth(segmenters, name)


def route(case: Mapping, by_modality: Mapping[str, str], by_dataset: Mapping[str, str]) -> str:
    """Segmenter name of ``case``: its dataset's (``masks.by_dataset``), else its modality's (``masks.by_modality``)."""
    name = by_dataset.get(case.get("dataset", "")) or by_modality.get(case["modality"])
    if name is None:
        raise ValueError(f"no segmenter for dataset {case.get('dataset', '')!r} (masks.by_dataset) "
                         f"nor for modality {case['modality']} (masks.by_modality)")
    return name


class _Segmenters:
    """Lazily built segmenters, one per configured name."""

    def __init__(self, configs: Mapping[str, dict]):
        self.configs = configs
        self.built: dict = {}

    def segment(self, name: str, case: dict) -> Segmentation:
        """Segmentation of ``case`` by the segmenter configured as ``name``, painted over its base (and the
        base's base...) if it has one (:mod:`medsynth.masks.overlay`)."""
        cfg = self.configs[name]
        own = self._own(name, cfg, case)
        if not cfg.get("base"):
            return own
        offset = chain_offset(chain_depth(self.configs, name))
        return overlay_segmentation(self.segment(cfg["base"], case), painted_only(own, cfg.get("paint")), offset)

    def _own(self, name: str, cfg: dict, case: dict) -> Segmentation:
        """The segmenter's own map: the case's label map (dataset backend) or the backend run on the image."""
        if cfg.get("backend") == "dataset":
            return self._dataset_labels(name, cfg, case)
        if name not in self.built:
            self.built[name] = make_segmenter(cfg)
        return self.built[name].segment(nib.load(case["registered_path"]), case["modality"])

    @staticmethod
    def _dataset_labels(name: str, cfg: dict, case: dict) -> Segmentation:
        """The case's own (registered) label map with the segmenter's class map names."""
        if not case.get("registered_label_path"):
            raise ValueError(f"segmenter {name!r} uses the dataset's label maps, but this case has none")
        return Segmentation(nib.load(case["registered_label_path"]), structure_names(cfg["class_map"]))


def _offset_note(segmenters: Mapping[str, dict], name: str) -> str:
    """Reminder, in an unknown-label message, that a map painted over a base has shifted ids."""
    cfg = segmenters[name]
    if not cfg.get("base"):
        return ""
    if cfg.get("backend") == "dataset" and chain_depth(segmenters, name) == 1:
        return (f"; ids from {DATASET_LABEL_OFFSET} up are the dataset's ids + {DATASET_LABEL_OFFSET}"
                f" (painted over {cfg['base']!r})")
    return (f"; ids from {DATASET_LABEL_OFFSET} up are painted layers' ids + {DATASET_LABEL_OFFSET} x their depth"
            f" in the chain of bases (painted over {cfg['base']!r})")


def unknown_label_ids(labels: np.ndarray, names: dict[int, str]) -> list[int]:
    """Label ids present in ``labels`` that the class map ``names`` does not name (background 0 aside)."""
    return sorted(int(i) for i in np.unique(labels) if i != 0 and int(i) not in names)


def masks_shard(registered: pd.DataFrame, out_dir: str | Path, segmenters: dict[str, dict], by_modality: dict[str, str],
                specs: list[ConditionSpec], progress: bool = True, unknown_labels: str = "report",
                by_dataset: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Segment the registered cases of a shard and derive their condition masks (folder written atomically).

    A case goes to its dataset's segmenter (``by_dataset``, config ``masks.by_dataset``) if it has one,
    else to its modality's (``by_modality``). Label ids outside the segmenter's class map are listed in
    the row (``unknown_label_ids``); ``unknown_labels="quarantine"`` (config ``masks.unknown_labels``)
    also quarantines the case.
    """
    out_dir = Path(out_dir)
    by_dataset = dict(by_dataset or {})
    check_routing(segmenters, by_dataset)
    pool = _Segmenters(segmenters)

    def segment(case: dict, tmp: Path) -> dict:
        name = route(case, by_modality, by_dataset)
        seg = pool.segment(name, case)
        labels = np.asarray(seg.labels.dataobj).astype(np.int16)
        voxel_ml = float(np.prod(np.linalg.norm(seg.labels.affine[:3, :3], axis=0))) / 1000.0
        result = condition_masks(labels, seg.names, specs, voxel_ml, case.get("modality"))
        unknown = unknown_label_ids(labels, seg.names)
        produced = {"segmenter": name, "labels_path": str(tmp / "labels" / f"{case['case_id']}.nii.gz"),
                    "conditions_path": str(tmp / "conditions" / f"{case['case_id']}.nii.gz"),
                    "structures": json.dumps(sorted(set(seg.names[i] for i in np.unique(labels) if i in seg.names))),
                    "unknown_label_ids": json.dumps(unknown) if unknown else "",
                    **{f"ml_{k}": round(v, 2) for k, v in result.volumes_ml.items()}}
        if unknown:
            message = (f"label ids {unknown} are not in the class map of segmenter {name!r}"
                       f" (masks.segmenters.{name}.class_map){_offset_note(segmenters, name)}")
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
