"""Rule ``downstream``'s entry: train and score one setting of the downstream segmenter (see
:mod:`medsynth.evaluation`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medsynth.evaluation.records import pixel_spacing, write_metrics_json
from medsynth.io.trainsets import load_rows, read_index, select_rows
from medsynth.launch import is_main_process
from medsynth.metrics.masks import channel_means
from medsynth.names import MEDDIFF_KINDS, parse_setting

__all__ = ["downstream_intervals", "meddiff_filter", "per_sample", "run_downstream"]

log = logging.getLogger(__name__)


def meddiff_filter(images: np.ndarray, masks: np.ndarray, real_images: np.ndarray, extractor: str | Path | None,
                    cfg: Mapping) -> tuple[np.ndarray, np.ndarray, dict]:
    """MedDiff-FT quality filter + mask erosion: keep the synthetic slices whose encoder features lie
    closest to the real training slices' (``keep_fraction``), erode their labels (``erosion``). ``cfg``:
    config ``downstream.meddiff`` (keys left out take the schema's defaults)."""
    from medsynth.downstream import encoder_features, load_segmenter
    from medsynth.sample.meddiff import erode_masks, quality_filter
    from medsynth.settings import section

    cfg = section("downstream", {"meddiff": dict(cfg)})["meddiff"]
    if extractor is None:
        raise ValueError("the MedDiff-FT filter needs the self-trained feature extractor (downstream real segmenter)")
    segmenter = load_segmenter(extractor)
    keep, scores = quality_filter(encoder_features(segmenter, torch.from_numpy(real_images)),
                                  encoder_features(segmenter, torch.from_numpy(images)),
                                  keep_fraction=float(cfg["keep_fraction"]), method=str(cfg["filter_method"]))
    keep = keep.numpy()
    eroded = erode_masks(torch.from_numpy(masks[keep] > 0), int(cfg["erosion"])).numpy()
    info = {"kept": int(keep.sum()), "of": int(len(keep)), "erosion": int(cfg["erosion"]),
            "method": str(cfg["filter_method"])}
    return images[keep], eroded.astype(np.uint8), info


def _rewindowed(images: np.ndarray, window: Sequence[float] | None, intensity: Mapping | None) -> np.ndarray:
    """Synthetic CT slices as the real pictures were exported (``downstream.synthetic_window``; None: as they are)."""
    from medsynth.downstream import window_to_unit

    if window is None:
        return images
    if not intensity or "ct_hu_range" not in intensity:
        raise ValueError("downstream.synthetic_window re-windows the synthetic CT slices: it needs config "
                         "intensity.ct_hu_range (the rule passes config['intensity'])")
    return window_to_unit(images, intensity["ct_hu_range"], window)


def per_sample(test_index, values: Mapping, names: Sequence[str]) -> dict:
    """Each test slice's case, slice and per-channel Dice (null where its reference lacks the channel): the
    values behind the record's means, for ViCTr Fig. 7's violins."""
    dice = np.asarray(values["dice"], dtype=np.float64)
    return {"case_id": [str(c) for c in test_index["case_id"]], "slice": [int(z) for z in test_index["slice"]],
            "dice": {name: [None if not np.isfinite(v) else float(v) for v in dice[:, c]]
                     for c, name in enumerate(names)}}


def downstream_intervals(test_index, values: Mapping, names: Sequence[str], statistics: Mapping | None) -> dict:
    """``estimates`` / ``bootstrap`` of a downstream record: ``mdsc`` / ``mhd95`` (and ``dice`` / ``hd95``,
    the same numbers under the metrics records' names), ``jaccard``, ``asd``, per channel ``dice/<c>``."""
    from medsynth.evaluation.intervals import IntervalSet, mask_estimates
    from medsynth.settings import section

    intervals = IntervalSet(test_index, section("statistics", statistics or {}))
    mask_estimates(intervals, values, names)
    intervals.add("mdsc", intervals.estimates["dice"])
    intervals.add("mhd95", intervals.estimates["hd95"])
    return intervals.record()


def run_downstream(shards: Sequence[str], synthetic: str | None, setting: str, cfg: Mapping, outputs,
                   evaluation_json: str | Path, grid_cfg: Mapping, slice_size: int,
                   extractor: str | Path | None = None, statistics: Mapping | None = None,
                   intensity: Mapping | None = None) -> dict:
    """Train and score one downstream setting (module docstring); returns the evaluation record.
    ``cfg``: config ``downstream`` (keys left out take the schema's defaults); ``outputs``: where the segmenter
    trains (:class:`medsynth.train.TrainOutputs`, or a folder); ``statistics``: config ``statistics`` (bootstrap
    intervals over the test patients); ``intensity``: config ``intensity`` (``ct_hu_range``: the synthetic
    slices' HU scale, read when ``synthetic_window`` re-windows them)."""
    from medsynth.downstream import (
        TRAIN_KEYS,
        compose_setting,
        evaluate_segmenter,
        keep_channels,
        setting_augments,
        task_config,
        train_segmenter,
    )
    from medsynth.io.generated import load_generated
    from medsynth.settings import section
    from medsynth.train.loop import run_fingerprint

    fingerprint = run_fingerprint(dict(cfg), setting, files=[*shards, *([synthetic] if synthetic else [])])
    task, kind, model_name = parse_setting(setting)
    cfg = task_config(section("downstream", cfg), task)
    meddiff = kind in MEDDIFF_KINDS
    index = read_index(shards)  # the CSVs only; the training slices are read now, the test slices after training
    train_rows = select_rows(index, cfg["train_select"])
    test_rows = select_rows(index, cfg["test_select"])
    if not len(test_rows):
        raise ValueError(f"downstream.test_select {cfg['test_select']} keeps no slice: nothing to score on")
    _, train_images, train_masks, all_names = load_rows(shards, train_rows, index)
    train_masks, names = keep_channels(train_masks, all_names, cfg["channels"])
    real = (train_images, (train_masks > 0).astype(np.float32))
    del train_masks
    synth, filtered = None, None
    if synthetic:
        s_images, s_masks, s_names = load_generated(synthetic)
        if s_names and list(s_names) != list(all_names):
            raise ValueError(f"{synthetic}: condition channels {s_names} differ from the training sets' {all_names}")
        s_masks, _ = keep_channels(s_masks, all_names, cfg["channels"])
        s_images = _rewindowed(s_images, cfg["synthetic_window"], intensity)
        if cfg["synthetic_nonempty"]:  # only the slices with foreground in the learned channels
            keep = s_masks.reshape(len(s_masks), -1).any(axis=1)
            log.info("downstream %s: %d of %d synthetic slices have foreground in %s", setting, int(keep.sum()),
                     len(keep), names)
            s_images, s_masks = s_images[keep], s_masks[keep]
        if kind == "real_synth_mgf":
            s_images, s_masks, filtered = meddiff_filter(s_images, s_masks, real[0], extractor,
                                                          cfg["meddiff"])
        order = torch.randperm(len(s_images), generator=torch.Generator().manual_seed(int(cfg["seed"])))
        synth = (s_images[order.numpy()], s_masks[order.numpy()].astype(np.float32))
    x, y, summary = compose_setting("real_synth" if meddiff else kind, real, synth,
                                    float(cfg["synthetic_fraction"]), int(cfg["seed"]),
                                    synthetic_count=cfg["synthetic_count"])
    train_cfg = {k: v for k, v in cfg.items() if k in TRAIN_KEYS}
    train_cfg["fingerprint"] = fingerprint
    model, result = train_segmenter(x, y, train_cfg, outputs, augment=setting_augments("real_synth" if meddiff else kind))
    if result.status != "completed":
        raise SystemExit(result.exit_code)  # preempted: checkpoint written, rerun resumes
    if not is_main_process():
        return {}  # a worker of a multi-process run: the main process scores and writes
    spacing = pixel_spacing(grid_cfg, slice_size) if cfg["distance_unit"] == "mm" else None
    _, test_images, test_masks, _ = load_rows(shards, test_rows, index)
    test_masks, _ = keep_channels(test_masks, all_names, cfg["channels"])
    scores = evaluate_segmenter(model, test_images, (test_masks > 0).astype(np.float32), names, spacing=spacing)
    record = {"setting": setting, "task": task, "kind": kind, "synthetic_model": model_name or None,
              "n_train_real": summary["n_real"], "n_train_synthetic": summary["n_synthetic"],
              "n_test": int(len(test_rows)), "steps": int(result.step), "seconds_per_step": result.seconds_per_step,
              "meddiff_filter": filtered if synthetic else None,
              "mdsc": scores["mdsc"], "mhd95": scores["mhd95"], "hd95_unit": scores["hd95_unit"],
              "spacing_mm": spacing, "channels_learned": names, "mean": channel_means(scores["channels"]),
              "channels": scores["channels"]}
    record["per_sample"] = per_sample(index.iloc[test_rows], scores["values"], names)
    record.update(downstream_intervals(index.iloc[test_rows], scores["values"], names, statistics))
    write_metrics_json(evaluation_json, record)
    log.info("downstream %s: mDSC %.4f, mHD95 %s", setting, scores["mdsc"], scores["mhd95"])
    return record
