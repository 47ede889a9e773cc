"""Rule ``volume_downstream``'s entry: MAISI-v2's downstream tumour segmentation on the 3D path.

One task (a tumour type: ``volumes.downstream.tasks.<task>`` = ``{roi, select}``) x one setting:

* ``real``: the 3D segmenter (:mod:`medsynth.downstream.volume_segmenter`) trains on the task's real
  training volumes (``train_select`` and the task's ``select`` both hold), labelled with their ``roi``
  condition channel;
* ``real_synth``: the same plus every volume of the generated set (rule ``volume_sample``, generated from
  the masks of those training volumes), each labelled with the ``roi`` channel of its own conditioning
  masks. Every row of the set's index must name one of the task's training cases (``case_id``).

Scored on the task's real test volumes (``test_select`` and the task's ``select``): the ROI's per-case Dice
(:func:`medsynth.downstream.case_dice`: both empty = 1, one empty = 0), its mean, and bootstrap intervals
over the test patients (:class:`medsynth.evaluation.intervals.IntervalSet`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medsynth.evaluation.records import write_metrics_json
from medsynth.io.trainsets import both_selections, load_rows, read_index, select_rows

__all__ = ["VOLUME_SETTINGS", "run_volume_downstream", "task_rows", "volume_dice_intervals"]

log = logging.getLogger(__name__)

#: the settings of rule volume_downstream (config ``volumes.downstream.settings``)
VOLUME_SETTINGS = ("real", "real_synth")


def task_rows(index: pd.DataFrame, select: Mapping | None, task_select: Mapping | None) -> np.ndarray:
    """Positions of the rows of ``index`` that both selections keep (:func:`~medsynth.io.trainsets.both_selections`)."""
    return select_rows(index, both_selections(select, task_select))


def volume_dice_intervals(test_index: pd.DataFrame, dice: np.ndarray, roi: str, statistics: Mapping | None) -> dict:
    """``estimates`` / ``bootstrap`` of the per-case Dice over the test patients: ``dice``, ``dice/<roi>`` and
    ``mdsc`` (the same numbers under the 2D downstream records' names)."""
    from medsynth.evaluation.intervals import IntervalSet
    from medsynth.settings import section

    intervals = IntervalSet(test_index, section("statistics", dict(statistics or {})))
    estimate = intervals.means("dice", np.asarray(dice, dtype=np.float64))
    intervals.add(f"dice/{roi}", estimate)
    intervals.add("mdsc", estimate)
    return intervals.record()


def _roi_channel(names: Sequence[str], roi: str, task: str, where: str) -> int:
    if roi not in list(names):
        raise ValueError(f"volumes.downstream.tasks.{task}.roi {roi!r} is not a condition channel of {where} "
                         f"(channels: {list(names)})")
    return list(names).index(roi)


def _synthetic_set(synthetic: tuple[str, str], roi: str, task: str, train_cases: set[str], shape: tuple
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Images and ROI labels of the generated set, checked against the task's training cases."""
    from medsynth.io.generated import load_generated

    tensors, index_csv = (str(p) for p in synthetic)
    images, masks, names = load_generated(tensors)
    channel = _roi_channel(names, roi, task, f"the generated set {tensors}")
    index = pd.read_csv(index_csv, dtype={"case_id": str}, keep_default_na=False)
    if len(index) != len(images):
        raise ValueError(f"{index_csv}: {len(index)} rows for {len(images)} generated volumes in {tensors}")
    if "case_id" not in index:
        raise ValueError(f"{index_csv}: no case_id column (the real case each volume was generated for)")
    foreign = sorted(set(index["case_id"].astype(str)) - train_cases)
    if foreign:
        raise ValueError(f"{index_csv}: {len(foreign)} generated volume(s) of cases that are not training volumes "
                         f"of task {task!r} (e.g. {foreign[:5]}): the set must be generated from its training masks")
    if tuple(images.shape[2:]) != tuple(shape):
        raise ValueError(f"{tensors}: generated volumes of size {list(images.shape[2:])}, the real ones "
                         f"{list(shape)}")
    return images.astype(np.float32), masks[:, channel:channel + 1] > 0


def run_volume_downstream(shards: Sequence[str], synthetic: tuple[str, str] | None, task: str,
                          task_cfg: Mapping, setting: str, cfg: Mapping, outputs, evaluation_json: str | Path,
                          statistics: Mapping | None = None) -> dict:
    """Train and score one task x setting (module docstring); returns the evaluation record, also written to
    ``evaluation_json``. A preempted run exits (``SystemExit`` with the loop's exit code) and writes no record.

    ``shards``: the 3D training-set shards; ``synthetic``: ``(generated .safetensors, its index .csv)`` for
    ``real_synth``, ``None`` for ``real``; ``task_cfg``: ``{roi, select}``; ``cfg``: config
    ``volumes.downstream`` (keys left out take the schema's defaults); ``outputs``: where the segmenter trains
    (:class:`medsynth.train.TrainOutputs`, or a folder); ``statistics``: config ``statistics``.
    """
    from medsynth.downstream import (
        case_dice,
        patch_shape,
        predict_volumes,
        train_volume_segmenter,
        volume_downstream_settings,
    )
    from medsynth.train.loop import run_fingerprint

    if setting not in VOLUME_SETTINGS:
        raise ValueError(f"volume_downstream setting {setting!r}: expected one of {list(VOLUME_SETTINGS)}")
    if (setting == "real_synth") != (synthetic is not None):
        raise ValueError(f"volume_downstream setting {setting!r} " + ("needs a generated set" if synthetic is None
                                                                     else "takes no generated set"))
    fingerprint = run_fingerprint(dict(cfg), task, dict(task_cfg), setting,
                                  files=[*shards, *(synthetic or ())])
    cfg = volume_downstream_settings(cfg)
    roi, task_select = str(task_cfg["roi"]), dict(task_cfg.get("select") or {})
    index = read_index(shards)
    train_rows = task_rows(index, cfg["train_select"], task_select)
    test_rows = task_rows(index, cfg["test_select"], task_select)
    for rows, key in ((train_rows, "train_select"), (test_rows, "test_select")):
        if not len(rows):
            raise ValueError(f"task {task!r}: volumes.downstream.{key} {dict(cfg[key])} with "
                             f"volumes.downstream.tasks.{task}.select {task_select} keeps no volume")
    rows, images, masks, names = load_rows(shards, train_rows, index)
    if images.ndim != 5:
        raise ValueError(f"{list(shards)}: expected volumes (N, 1, X, Y, Z), got {images.shape}")
    channel = _roi_channel(names, roi, task, "the training-set shards")
    labels = masks[:, channel:channel + 1] > 0
    del masks
    n_real, n_synth = len(images), 0
    if synthetic is not None:
        s_images, s_labels = _synthetic_set(synthetic, roi, task, set(rows["case_id"].astype(str)), images.shape[2:])
        n_synth = len(s_images)
        images, labels = np.concatenate([images, s_images]), np.concatenate([labels, s_labels])
    model, result = train_volume_segmenter(images, labels, cfg, outputs, fingerprint=fingerprint)
    if result.status != "completed":
        raise SystemExit(result.exit_code)  # preempted: checkpoint written, a rerun resumes
    del images, labels
    test_index, test_images, test_masks, _ = load_rows(shards, test_rows, index)
    pred = predict_volumes(model, test_images, cfg["patch_size"], cfg["sw_batch_size"], cfg["sw_overlap"])
    dice = case_dice(pred, test_masks[:, channel:channel + 1] > 0)
    record = {"task": task, "setting": setting, "roi": roi, "model": str(cfg["model"]["type"]),
              "n_train_real": int(n_real), "n_train_synthetic": int(n_synth), "n_test": int(len(test_rows)),
              "test_cases": test_index["case_id"].astype(str).tolist(),
              "test_patients": test_index["patient_id"].astype(str).tolist(),
              "case_dice": [float(d) for d in dice], "dice": float(np.mean(dice)), "mdsc": float(np.mean(dice)),
              "steps": int(result.step), "seconds_per_step": result.seconds_per_step,
              "patch_size": list(patch_shape(cfg["patch_size"], test_images.shape[2:])),
              "empty_case_rule": "both empty: 1.0; exactly one empty: 0.0"}
    record.update(volume_dice_intervals(test_index, dice, roi, statistics))
    write_metrics_json(evaluation_json, record)
    log.info("volume downstream %s/%s: Dice %.4f over %d test volumes (%d real + %d synthetic training volumes)",
             task, setting, record["dice"], len(dice), n_real, n_synth)
    return record
