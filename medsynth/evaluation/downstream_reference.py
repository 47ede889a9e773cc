"""Rule ``downstream_reference``'s entry: a pretrained segmenter scored on a downstream task's real test slices.

MedSyn2 Table 5 sets the segmenters trained on real / synthesized / combined data beside two published
models run off the shelf on the same test pictures: "even surpassing the SOTA models (MedPSeg Dice
65.2 %)". A reference (config ``downstream.tasks.<task>.references.<name>``) names one of the study's
segmenters (``masks.segmenters.<segmenter>``: its backend and options; its ``base`` / ``paint`` are not
applied) and, per learned channel, the structures of its label map that make that channel. Each test
slice is segmented on its own, as a one-slice CT volume in HU:

* the slice's [-1, 1] is mapped back onto ``window`` (HU) - the CT window its 8-bit picture was exported
  with (SemiSeg: ``synthetic_window``'s choice, see the MedSyn2 study) - or, with ``window`` null, onto
  ``intensity.ct_hu_range`` (slices of the study's own CT);
* the slice is a canonical (RAS) plane, so the volume's affine is the identity (the backend brings it to
  its own orientation); the spacing is 1 mm (pictures carry none; MedPSeg resizes every slice to 512 px);
* the scores are the downstream rows' (:func:`medsynth.downstream.metrics_from_masks`, the same test
  slices and channels), with the same intervals.

Missing weights are not an error: the record's ``status`` is "unavailable: <why>" and the table says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medsynth.evaluation.downstream_run import downstream_intervals, per_sample
from medsynth.evaluation.records import pixel_spacing, write_metrics_json
from medsynth.io.trainsets import load_rows, read_index, select_rows

__all__ = ["reference_config", "reference_masks", "run_reference", "unit_to_hu"]

log = logging.getLogger(__name__)

REFERENCE_ORIENTATION = np.eye(4)  # a slice of the shards is a canonical (RAS) plane (x, y) at 1 mm


def unit_to_hu(images: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Slices in [-1, 1] mapped back onto the HU ``window`` [low, high] they were exported from (float32;
    :func:`medsynth.preprocess.intensity.unit_to_hu` over a checked window)."""
    from medsynth.preprocess.intensity import unit_to_hu as hu_of_unit

    lo, hi = (float(v) for v in window)
    if not hi > lo:
        raise ValueError(f"reference window {list(window)} must rise (low < high, HU)")
    return hu_of_unit(images, (lo, hi))


def reference_config(downstream: Mapping, masks: Mapping, task: str, name: str) -> tuple[dict, dict]:
    """``(reference, segmenter config)`` of reference ``name`` of task ``task``; an unknown name is a ValueError
    naming those configured."""
    from medsynth.downstream import task_config

    references = task_config(downstream, task).get("references") or {}
    if name not in references:
        raise ValueError(f"no reference {name!r} in downstream.tasks.{task}.references ({sorted(references)})")
    reference = dict(references[name])
    segmenters = masks.get("segmenters") or {}
    if reference["segmenter"] not in segmenters:
        raise ValueError(f"downstream.tasks.{task}.references.{name}.segmenter {reference['segmenter']!r} is not "
                         f"a masks.segmenters entry ({sorted(segmenters)})")
    segmenter = dict(segmenters[reference["segmenter"]])
    if segmenter.get("backend") == "dataset":
        raise ValueError(f"reference {name!r}: segmenter {reference['segmenter']!r} reads the dataset's own label "
                         "maps; a reference runs a model on the test slices")
    return reference, segmenter


def reference_masks(segment: Callable, hu_slices: np.ndarray, structures: Sequence[Sequence[str]]) -> np.ndarray:
    """Binary masks (N, C, H, W) of ``hu_slices`` (N, 1, H, W) by ``segment`` (a backend's ``segment``), channel
    ``c`` = the labels named in ``structures[c]``; a structure the backend does not label is a ValueError."""
    import nibabel as nib
    from tqdm import tqdm

    out = np.zeros((len(hu_slices), len(structures), *hu_slices.shape[2:]), dtype=np.float32)
    for i, plane in enumerate(tqdm(hu_slices, desc="reference", unit="slice", disable=None)):
        seg = segment(nib.Nifti1Image(np.ascontiguousarray(plane[0])[:, :, None], REFERENCE_ORIENTATION), "CT")
        labels = np.asarray(seg.labels.dataobj)[:, :, 0]
        for c, names in enumerate(structures):
            unknown = sorted(set(names) - set(seg.names.values()))
            if unknown:
                raise ValueError(f"structures {unknown} are not labels of the reference segmenter "
                                 f"({sorted(seg.names.values())})")
            ids = [k for k, v in seg.names.items() if v in set(names)]
            out[i, c] = np.isin(labels, ids)
    return out


def run_reference(shards: Sequence[str], task: str, name: str, downstream: Mapping, masks: Mapping,
                  evaluation_json: str | Path, grid_cfg: Mapping, slice_size: int, intensity: Mapping,
                  statistics: Mapping | None = None) -> dict:
    """Score reference ``name`` of task ``task`` (module docstring); returns the record written to
    ``evaluation_json``. ``downstream`` / ``masks`` / ``intensity`` / ``statistics``: the validated config
    sections."""
    from medsynth.downstream import keep_channels, metrics_from_masks, task_config
    from medsynth.masks.backend import make_segmenter
    from medsynth.masks.types import WeightsUnavailable
    from medsynth.metrics.masks import channel_means

    reference, segmenter_cfg = reference_config(downstream, masks, task, name)
    cfg = task_config(downstream, task)
    index = read_index(shards)
    test_rows = select_rows(index, cfg["test_select"])
    if not len(test_rows):
        raise ValueError(f"downstream.tasks.{task}.test_select {cfg['test_select']} keeps no slice: nothing to score")
    _, images, masks_, all_names = load_rows(shards, test_rows, index)
    labels, names = keep_channels(masks_, all_names, cfg["channels"])
    missing = [n for n in names if n not in reference["structures"]]
    if missing:
        raise ValueError(f"downstream.tasks.{task}.references.{name}.structures names no structures for the "
                         f"learned channels {missing}")
    record = {"task": task, "reference": name, "segmenter": reference["segmenter"],
              "backend": segmenter_cfg["backend"], "paper_row": reference.get("paper_row"),
              "window": reference.get("window"), "n_test": int(len(test_rows)), "channels_learned": names}
    window = reference.get("window") or intensity["ct_hu_range"]
    try:
        pred = reference_masks(make_segmenter(segmenter_cfg).segment, unit_to_hu(images, window),
                               [reference["structures"][n] for n in names])
    except WeightsUnavailable as err:
        record["status"] = f"unavailable: {err}"
        write_metrics_json(evaluation_json, record)
        log.warning("downstream reference %s.%s: %s", task, name, record["status"])
        return record
    spacing = pixel_spacing(grid_cfg, slice_size) if cfg["distance_unit"] == "mm" else None
    scores = metrics_from_masks(pred, (labels > 0).astype(np.float32), names, spacing=spacing)
    record.update({"status": "computed", "mdsc": scores["mdsc"], "mhd95": scores["mhd95"],
                   "hd95_unit": scores["hd95_unit"], "spacing_mm": spacing,
                   "mean": channel_means(scores["channels"]), "channels": scores["channels"]})
    record["per_sample"] = per_sample(index.iloc[test_rows], scores["values"], names)
    record.update(downstream_intervals(index.iloc[test_rows], scores["values"], names, statistics))
    write_metrics_json(evaluation_json, record)
    log.info("downstream reference %s.%s: mDSC %.4f, mHD95 %s", task, name, scores["mdsc"], scores["mhd95"])
    return record
