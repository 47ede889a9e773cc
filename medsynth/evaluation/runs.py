"""Rule ``metrics``'s entry: every metric of one 2D sampling run (see :mod:`medsynth.evaluation`), and
what the 3D runs share with it (the files a run is scored from, its settings, the real set it pairs with)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medsynth.evaluation.extractor import SELF_EXTRACTOR, SegmenterEncoder
from medsynth.evaluation.records import pixel_spacing, write_metrics_json
from medsynth.io.trainsets import load_slices, select_rows
from medsynth.launch import resolve_device
from medsynth.metrics.masks import channel_means

__all__ = ["RunFiles", "RunSettings", "controllability", "evaluate_run", "metadata_grade_status", "paired_sets",
           "severity_grades"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFiles:
    """The files one sampling run is scored from: the generated set, its index and summary, the
    training-set shards of the real condition set, the self-trained extractor (a downstream segmenter)."""

    generated: str | Path
    index: str | Path
    summary: str | Path
    shards: Sequence[str]
    extractor: str | Path


@dataclass(frozen=True)
class RunSettings:
    """How a run is scored: config ``metrics`` and ``intensity``, the condition set's ``select``, the
    registration ``grid`` (mm distances), and for 2D runs the ``severity`` settings, whether the model
    was trained with graded prompts (``severity_prompt``) and the training slices' ``slice_size``."""

    metrics: Mapping
    intensity: Mapping
    select: Mapping
    grid: Mapping | None = None
    #: config ``statistics`` (bootstrap intervals); ``None``: the schema's defaults
    statistics: Mapping | None = None
    severity: Mapping | None = None
    severity_prompt: bool = False
    slice_size: int | None = None


def severity_grades(pred: torch.Tensor, names: Sequence[str], prompted: Sequence[str],
                    severity_cfg: Mapping) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(measured, wanted, settings)``: the grade measured on each predicted mask and the prompted grade."""
    from medsynth.generator.data import DEFAULT_SEVERITY, severity_fractions
    from medsynth.generator.data import severity_grades as grades
    from medsynth.models.prompts import SEVERITY_WORDS

    sev = {**DEFAULT_SEVERITY, **dict(severity_cfg or {})}
    measured = grades(severity_fractions(pred.float().numpy(), names, sev["organ"]), sev["thresholds"])
    wanted = np.array([SEVERITY_WORDS.index(w) for w in prompted])
    return measured, wanted, sev


def metadata_grade_status(severity_cfg: Mapping | None) -> str | None:
    """The controllability status when the prompted grades come from a metadata field
    (``generator.severity.from_field``): the mask-area grade measured on a re-segmented image is another
    quantity, so comparing the two would be circular. ``None`` for the mask-area grade."""
    field = (severity_cfg or {}).get("from_field")
    if not field:
        return None
    return f"not applicable: grades from metadata field {field}; no image measure of them"


def controllability(pred: torch.Tensor, names: Sequence[str], prompted: Sequence[str], severity_cfg: Mapping) -> dict:
    """Graded-severity control: the grade measured on the predicted masks against the prompted grade
    (``{"status": ...}`` when the grades come from metadata: :func:`metadata_grade_status`)."""
    from medsynth.models.prompts import SEVERITY_WORDS

    status = metadata_grade_status(severity_cfg)
    if status is not None:
        return {"status": status}
    measured, wanted, sev = severity_grades(pred, names, prompted, severity_cfg)
    confusion = {SEVERITY_WORDS[p]: {SEVERITY_WORDS[m]: int(((wanted == p) & (measured == m)).sum())
                                     for m in range(len(SEVERITY_WORDS))} for p in range(len(SEVERITY_WORDS))}
    return {"accuracy": float((measured == wanted).mean()), "n": int(len(wanted)), "organ": sev["organ"],
            "thresholds": list(sev["thresholds"]), "confusion_prompted_to_measured": confusion}


def paired_sets(shards: Sequence[str], select: Mapping, generated_path: str | Path):
    """The real condition set and the run generated for it: ``(index, rows, names, real, real_masks, fake)``.

    Raises ``ValueError`` when the generated set does not pair with the real one (count, shape,
    condition channels, or the masks it was conditioned on).
    """
    from medsynth.io.generated import load_generated

    index, images, masks, names = load_slices(shards, select)  # the selected slices only, shard by shard
    rows = select_rows(index, select)
    real, real_masks = images[rows].astype(np.float32), masks[rows] > 0
    fake, fake_masks, fake_names = load_generated(generated_path)
    if fake.shape != real.shape or (fake_names and list(fake_names) != list(names)):
        raise ValueError(f"{generated_path}: samples {fake.shape} / channels {fake_names} do not match the real set "
                         f"{real.shape} / channels {names} of the condition set")
    if not np.array_equal(fake_masks.astype(bool), real_masks):
        raise ValueError(f"{generated_path} was conditioned on other masks than the real set of {dict(select)}")
    return index, rows, names, real, real_masks, fake


def evaluate_run(files: RunFiles, out_json: str | Path, settings: RunSettings, model: str, run: str) -> dict:
    """Every metric of one sampling run (module docstring); writes and returns the record."""
    import pandas as pd

    from medsynth.downstream import load_segmenter, predict_masks
    from medsynth.evaluation.intervals import IntervalSet, mask_estimates, window_estimates
    from medsynth.metrics import (
        clip_fd_slices,
        fd_recipe,
        frechet_metrics,
        image_metric_values,
        inception_fid,
        mask_metric_values,
        mask_metrics,
        per_window_fd,
        pretrained_fd,
        pretrained_windowed_fd,
        recipe_unit_images,
        register_module_extractor,
    )

    from medsynth.settings import section

    torch.set_num_threads(1)
    extractor_dir, metrics_cfg, intensity_cfg = files.extractor, section("metrics", settings.metrics), settings.intensity
    index, rows, names, real, real_masks, fake = paired_sets(files.shards, settings.select, files.generated)
    sampled = pd.read_csv(files.index, keep_default_na=False)
    summary = json.loads(Path(files.summary).read_text())
    device = resolve_device(metrics_cfg["device"], "metrics.device")
    cuda = device.type == "cuda"  # torch-fidelity's feature extraction on the GPU
    segmenter = load_segmenter(extractor_dir).to(device)
    extractor_name = register_module_extractor(SELF_EXTRACTOR, SegmenterEncoder(segmenter))
    real01, fake01 = torch.from_numpy((real + 1.0) / 2.0), torch.from_numpy((fake + 1.0) / 2.0)
    n = len(real)
    kid_size = max(2, min(int(metrics_cfg["kid_subset_size"]), n))
    batch = int(metrics_cfg["batch_size"])
    setting = Path(extractor_dir).parent.name
    extractor_label = f"self-trained {segmenter.segmenter_record['model']['type']} encoder, downstream '{setting}'"

    intervals = IntervalSet(index.iloc[rows], section("statistics", settings.statistics or {}))
    fd = frechet_metrics(real01, fake01, extractor_name, kid=True, kid_subset_size=kid_size, batch_size=batch, cuda=cuda,
                         return_features=True)
    intervals.frechet("fd_self", *fd["features"])
    modalities = set(index.iloc[rows]["modality"].astype(str))
    hu_range = tuple(intensity_cfg["ct_hu_range"]) if modalities == {"CT"} else None  # MR: no HU
    recipes = metrics_cfg["fd_recipes"]
    inception_recipe = fd_recipe(recipes["inception"])
    inception = inception_fid(recipe_unit_images(torch.from_numpy(real), inception_recipe, hu_range),
                              recipe_unit_images(torch.from_numpy(fake), inception_recipe, hu_range),
                              metrics_cfg["inception_pretrained_path"], kid_subset_size=kid_size, batch_size=batch,
                              cuda=cuda, return_features=True)
    if inception.get("features") is not None:
        intervals.frechet("fid", *inception["features"])
    radimagenet = pretrained_fd("radimagenet_resnet50", metrics_cfg["radimagenet_pretrained_path"],
                                "metrics.radimagenet_pretrained_path", real, fake,
                                fd_recipe(recipes["radimagenet_resnet50"]), hu_range, batch_size=batch, cuda=cuda)
    mfid = clip_fd_slices("m3d_clip", metrics_cfg["m3d_clip_pretrained_path"], "metrics.m3d_clip_pretrained_path",
                          real, fake, hu_range, device=device)  # ViCTr's MFID
    windowed: list[dict] = []
    windowed_radimagenet = {"status": f"not applicable: modalities {sorted(modalities)} (CT windows)", "rows": []}
    if modalities == {"CT"}:
        windows = {k: tuple(v) for k, v in (intensity_cfg.get("windows") or {}).items()}
        window_rows = per_window_fd(real, fake, tuple(intensity_cfg["ct_hu_range"]), windows, extractor_name,
                                    kid=False, batch_size=batch, cuda=cuda, return_features=True)
        for row in window_rows:
            windowed.append({"window": row["window"], "plane": "XY", "fd": row.get("fd"), "status": row.get("status")})
        window_estimates(intervals, window_rows)
        windowed_radimagenet = pretrained_windowed_fd(
            "radimagenet_resnet50", metrics_cfg["radimagenet_pretrained_path"], "metrics.radimagenet_pretrained_path",
            real, fake, fd_recipe(recipes["radimagenet_resnet50"]), hu_range, windows, batch_size=batch, cuda=cuda)
    pair_values = image_metric_values(torch.from_numpy(fake), torch.from_numpy(real))
    pairs = {key: intervals.means(key, pair_values[key]).value for key in ("ssim", "psnr", "l1")}
    spacing = pixel_spacing(settings.grid, settings.slice_size)
    pred_fake = predict_masks(segmenter, fake)
    pred_real = predict_masks(segmenter, real)
    ref = torch.from_numpy(real_masks)
    fake_values = mask_metric_values(pred_fake, ref, spacing)
    mask_estimates(intervals, fake_values, list(names))
    real_values = mask_metric_values(pred_real, ref, spacing)
    mask_estimates(intervals, real_values, list(names), prefix="real_vs_gt/")
    record = {
        "model": model, "run": run, "n_real": n, "n_generated": int(len(fake)),
        "image_size": list(real.shape[2:]), "modalities": sorted(modalities),
        "sampling": {k: summary.get(k) for k in ("sampler", "steps", "nfe", "network_evals", "seconds",
                                                  "seconds_per_sample")},
        "hu_qc": summary.get("hu_qc", {"enabled": False}),
        "fid": {"value": inception.get("fid"), "status": inception["status"], "recipe": inception_recipe.record()},
        "kid": {"mean": inception.get("kid_mean"), "std": inception.get("kid_std"), "status": inception["status"]},
        "fd_self": {"value": fd["fd"], "kid_mean": fd["kid_mean"], "kid_std": fd["kid_std"],
                    "kid_subset_size": kid_size, "extractor": extractor_label},
        "fd_pretrained": {"radimagenet_resnet50": radimagenet, "m3d_clip": mfid},
        "windowed": windowed if windowed else [],
        "windowed_pretrained": {"radimagenet_resnet50": windowed_radimagenet},
        "windowed_status": "ok" if windowed else f"not applicable: modalities {sorted(modalities)} (CT windows)",
        "pairs": {"ssim": pairs["ssim"], "psnr": pairs["psnr"], "l1": pairs["l1"]},
        "mask_fidelity": {"segmenter": extractor_label, "distance_unit": "mm", "spacing_mm": spacing,
                          "generated_vs_gt": mask_metrics(pred_fake, ref, list(names), spacing=spacing,
                                                          values=fake_values),
                          "real_vs_gt": mask_metrics(pred_real, ref, list(names), spacing=spacing,
                                                     values=real_values)},
    }
    record["mask_fidelity"]["mean_generated_vs_gt"] = channel_means(record["mask_fidelity"]["generated_vs_gt"])
    record["mask_fidelity"]["mean_real_vs_gt"] = channel_means(record["mask_fidelity"]["real_vs_gt"])
    metadata_status = metadata_grade_status(settings.severity)
    if settings.severity_prompt and metadata_status is not None:
        record["controllability"] = {"status": metadata_status}
    elif settings.severity_prompt and "severity" in sampled.columns:
        prompted = sampled["severity"].astype(str).tolist()
        record["controllability"] = {"generated": controllability(pred_fake, names, prompted, settings.severity),
                                     "real": controllability(pred_real, names, prompted, settings.severity)}
        measured, wanted, _ = severity_grades(pred_fake, names, prompted, settings.severity)
        intervals.means("control_accuracy", (measured == wanted).astype(np.float64))
    else:
        record["controllability"] = {"status": "not applicable: the model was trained without graded prompts"}
    for column, key in (("hu_qc_first_pass", "hu_qc_first_pass_rate"), ("hu_qc_pass", "hu_qc_pass_rate"),
                        ("hu_qc_real_pass", "hu_qc_real_pass_rate")):
        if column in sampled.columns:  # the HU check ran: its pass rates with their intervals
            intervals.means(key, sampled[column].to_numpy(dtype=np.float64))
    record.update(intervals.record())
    # wall time is measured once per run: a point value without an interval (the claims table says so)
    record["estimates"]["seconds_per_sample"] = {"value": summary.get("seconds_per_sample"), "low": None, "high": None}
    write_metrics_json(out_json, record)
    log.info("metrics %s/%s: FD %.4f (%s), FID %s", model, run, fd["fd"], extractor_label, inception["status"])
    return record
