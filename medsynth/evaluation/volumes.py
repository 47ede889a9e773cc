"""Rule ``volume_metrics``'s entry: the metrics of one sampling run of volumes (see :mod:`medsynth.evaluation`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsynth.evaluation.clip_scores import volume_clip_scores
from medsynth.evaluation.extractor import SELF_EXTRACTOR, SegmenterEncoder, extractor_input_size, resize_slices
from medsynth.evaluation.records import voxel_spacing, write_metrics_json
from medsynth.evaluation.runs import RunFiles, RunSettings, paired_sets
from medsynth.launch import resolve_device
from medsynth.metrics.masks import channel_means

__all__ = ["evaluate_volume_run", "resegment_volumes"]

log = logging.getLogger(__name__)


def resegment_volumes(segmenter: nn.Module, volumes: np.ndarray, size: Sequence[int] | None,
                       batch_size: int) -> torch.Tensor:
    """Binary masks ``(N, C, X, Y, Z)`` of 2D segmenter predictions on every axial (XY) slice of the volumes."""
    from medsynth.downstream import predict_masks

    x = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))
    n, _, sx, sy, sz = x.shape
    slices = x.permute(0, 4, 1, 2, 3).reshape(n * sz, 1, sx, sy)  # axial slices along z
    pred = predict_masks(segmenter, resize_slices(slices, size), batch_size=batch_size)
    pred = resize_slices(pred.float(), (sx, sy), mode="nearest") > 0.5
    return pred.reshape(n, sz, -1, sx, sy).permute(0, 2, 3, 4, 1).contiguous()


def evaluate_volume_run(files: RunFiles, out_json: str | Path, settings: RunSettings, model: str, run: str) -> dict:
    """Metrics of one sampling run of volumes (module docstring) in :func:`evaluate_run`'s JSON layout.

    ``files.shards``: the 3D training-set shards (``trainsets/volumes``); ``settings.select`` the condition
    set the run was sampled for (one generated volume per real volume, same masks). ``settings.metrics``:
    config ``metrics`` (keys left out take the schema's defaults: ``batch_size``, ``kid_subset_size``,
    ``central_fraction`` of the slices per axis, ``inception_pretrained_path``, ``radimagenet_pretrained_path``,
    ``fd_recipes``, ...) and the rule's ``extractor_size`` (optional ``[H, W]`` of the extractor's input);
    ``settings.intensity``: ``ct_hu_range`` and ``windows`` (``{name: [level, width]}``). ``settings.grid``
    (``spacing_mm``, ``size`` of the registration grid) gives mm distances; without it they are in voxels.
    ``windowed`` rows ``{"window", "plane", "fd", "status"}`` use MedSyn2 Table 1's plane labels XY / YZ /
    ZX (``plane: "mean"``: mean over the planes of a window; ``window: "mean"``: over all cells).
    """
    from medsynth.downstream import load_segmenter
    from medsynth.metrics import (
        clip_fd_volumes,
        fd_recipe,
        frechet_metrics,
        image_metrics,
        inception_fid,
        mask_metrics,
        per_plane_windowed_fd,
        pretrained_fd_volumes,
        pretrained_windowed_fd,
        recipe_unit_images,
        register_module_extractor,
    )
    from medsynth.metrics.frechet import PLANE_LABELS, PLANES, central_slices

    torch.set_num_threads(1)
    from medsynth.settings import section

    extractor_dir, intensity_cfg, grid_cfg = files.extractor, settings.intensity, settings.grid
    extra = ("extractor_size",)  # the volume rule's own key beside the metrics section
    metrics_cfg = {**section("metrics", {k: v for k, v in settings.metrics.items() if k not in extra}),
                   **{k: settings.metrics[k] for k in extra if k in settings.metrics}}
    index, rows, names, real, real_masks, fake = paired_sets(files.shards, settings.select, files.generated)
    if real.ndim != 5:
        raise ValueError(f"{list(files.shards)}: expected volumes (N, 1, X, Y, Z), got {real.shape}; 2D runs: evaluate_run")
    summary = json.loads(Path(files.summary).read_text())
    import pandas as pd

    sampled_rows = len(pd.read_csv(files.index, keep_default_na=False))
    if sampled_rows != len(fake):
        raise ValueError(f"{files.index}: {sampled_rows} rows for {len(fake)} generated volumes")
    device = resolve_device(metrics_cfg["device"], "metrics.device")
    cuda = device.type == "cuda"  # torch-fidelity's feature extraction on the GPU
    segmenter = load_segmenter(extractor_dir).to(device)
    size = extractor_input_size(segmenter, metrics_cfg)
    extractor_name = register_module_extractor(SELF_EXTRACTOR, SegmenterEncoder(segmenter, size))
    setting = Path(extractor_dir).parent.name
    extractor_label = f"self-trained {segmenter.segmenter_record['model']['type']} encoder, downstream '{setting}'"
    batch = int(metrics_cfg["batch_size"])
    fraction = float(metrics_cfg["central_fraction"])
    real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)

    # unwindowed 2.5D FD (+ KID) per plane on the central slices, and its mean over the planes
    per_plane, n_slices = {}, None
    for plane, axis in PLANES.items():
        r01 = (central_slices(real_t, axis, fraction) + 1.0) / 2.0
        f01 = (central_slices(fake_t, axis, fraction) + 1.0) / 2.0
        n_slices = min(len(r01), len(f01)) if n_slices is None else min(n_slices, len(r01), len(f01))
        kid_size = max(2, min(int(metrics_cfg["kid_subset_size"]), len(r01), len(f01)))
        res = frechet_metrics(r01, f01, extractor_name, kid=True, kid_subset_size=kid_size, batch_size=batch, cuda=cuda)
        per_plane[PLANE_LABELS[plane]] = {k: res[k] for k in ("fd", "kid_mean", "kid_std", "n_real", "n_fake")}
    fd_mean = {k: float(np.mean([p[k] for p in per_plane.values()])) for k in ("fd", "kid_mean", "kid_std")}
    axial = PLANES["axial"]
    modalities = set(index.iloc[rows]["modality"].astype(str))
    hu_range = tuple(intensity_cfg["ct_hu_range"]) if modalities == {"CT"} else None  # MR: no HU
    recipes = metrics_cfg["fd_recipes"]
    inception_recipe = fd_recipe(recipes["inception"])
    inception_sets = [central_slices(v, axial, inception_recipe.central_fraction) for v in (real_t, fake_t)]
    groups = [torch.arange(len(v)).repeat_interleave(len(s) // len(v)) for v, s in zip((real_t, fake_t),
                                                                                       inception_sets)]
    inception = inception_fid(*(recipe_unit_images(s, inception_recipe, hu_range, g)
                                for s, g in zip(inception_sets, groups)),
                              metrics_cfg["inception_pretrained_path"], kid_subset_size=max(2, min(
                                  int(metrics_cfg["kid_subset_size"]), n_slices)), batch_size=batch, cuda=cuda)
    radimagenet = pretrained_fd_volumes("radimagenet_resnet50", metrics_cfg["radimagenet_pretrained_path"],
                                        "metrics.radimagenet_pretrained_path", real_t, fake_t,
                                        fd_recipe(recipes["radimagenet_resnet50"]), hu_range, batch_size=batch,
                                        cuda=cuda)
    # whole-volume CLIP embeddings (ViCTr's MFID network, MedSyn2's CT-CLIP); "unavailable" without weights
    spacing = voxel_spacing(grid_cfg, real.shape[2:]) if grid_cfg else None
    clip = {name: clip_fd_volumes(name, metrics_cfg[f"{name}_pretrained_path"], f"metrics.{name}_pretrained_path",
                                  real_t, fake_t, hu_range, spacing, device=device)
            for name in ("m3d_clip", "ct_clip")}
    # MedSyn2 Tables 2 / 3: CLIP scores (T2I, I2I) and zero-shot abnormality classification, with the Real rows
    clip_scores = volume_clip_scores(metrics_cfg, index.iloc[rows], real_t, fake_t, hu_range, spacing, device=device)

    windowed: list[dict] = []
    windowed_radimagenet = {"status": f"not applicable: modalities {sorted(modalities)} (CT windows)", "rows": []}
    if modalities == {"CT"}:
        windows = {k: tuple(v) for k, v in (intensity_cfg.get("windows") or {}).items()}
        for row in per_plane_windowed_fd(real_t, fake_t, tuple(intensity_cfg["ct_hu_range"]), windows, extractor_name,
                                         central_fraction=fraction, kid=False, batch_size=batch, cuda=cuda):
            windowed.append({"window": row["window"], "plane": PLANE_LABELS.get(row["plane"], row["plane"]),
                             "fd": row.get("fd"), "n_real": row.get("n_real"), "n_fake": row.get("n_fake"),
                             "status": row.get("status")})
        windowed_radimagenet = pretrained_windowed_fd(
            "radimagenet_resnet50", metrics_cfg["radimagenet_pretrained_path"], "metrics.radimagenet_pretrained_path",
            real_t, fake_t, fd_recipe(recipes["radimagenet_resnet50"]), hu_range, windows, batch_size=batch, cuda=cuda)
    pairs = image_metrics(fake_t, real_t)
    pred_fake = resegment_volumes(segmenter, fake, size, batch)
    pred_real = resegment_volumes(segmenter, real, size, batch)
    ref = torch.from_numpy(real_masks)
    record = {
        "model": model, "run": run, "n_real": int(len(real)), "n_generated": int(len(fake)),
        "image_size": list(real.shape[2:]), "spatial_dims": 3, "modalities": sorted(modalities),
        "sampling": {k: summary.get(k) for k in ("sampler", "steps", "nfe", "network_evals", "seconds",
                                                  "seconds_per_sample")},
        "hu_qc": summary.get("hu_qc", {"enabled": False}),
        "fid": {"value": inception.get("fid"), "status": inception["status"], "plane": "XY",
                "recipe": inception_recipe.record()},
        "kid": {"mean": inception.get("kid_mean"), "std": inception.get("kid_std"), "status": inception["status"],
                "plane": "XY"},
        "fd_self": {"value": fd_mean["fd"], "kid_mean": fd_mean["kid_mean"], "kid_std": fd_mean["kid_std"],
                    "per_plane": per_plane, "central_fraction": fraction, "extractor_input_size": size,
                    "extractor": extractor_label},
        "fd_pretrained": {"radimagenet_resnet50": radimagenet, **clip},
        "clip_scores": clip_scores,
        "windowed": windowed,
        "windowed_pretrained": {"radimagenet_resnet50": windowed_radimagenet},
        "windowed_status": "ok" if windowed else f"not applicable: modalities {sorted(modalities)} (CT windows)",
        "pairs": {"ssim": pairs["ssim"], "psnr": pairs["psnr"], "l1": pairs["l1"]},
        "mask_fidelity": {"segmenter": f"{extractor_label}, axial slice by slice",
                          "distance_unit": "mm" if spacing else "voxel", "spacing_mm": spacing,
                          "generated_vs_gt": mask_metrics(pred_fake, ref, list(names), spacing=spacing),
                          "real_vs_gt": mask_metrics(pred_real, ref, list(names), spacing=spacing)},
        "controllability": {"status": "not applicable: graded prompts are measured on 2D slices"},
    }
    record["mask_fidelity"]["mean_generated_vs_gt"] = channel_means(record["mask_fidelity"]["generated_vs_gt"])
    record["mask_fidelity"]["mean_real_vs_gt"] = channel_means(record["mask_fidelity"]["real_vs_gt"])
    write_metrics_json(out_json, record)
    log.info("volume metrics %s/%s: 2.5D FD %.4f (%s), FID %s", model, run, fd_mean["fd"], extractor_label,
             inception["status"])
    return record
