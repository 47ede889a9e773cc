"""Entry functions of the downstream and metrics rules: what is compared with what, and the JSON written.

* :func:`run_downstream` (rule ``downstream``): one training setting of the downstream segmenter
  (ViCTr Table 3, MedSyn2 Table 5). ``real`` / ``real_aug`` train on the real ``train_select``
  slices; ``real_synth-<model>`` adds ``synthetic_fraction`` x as many synthetic slices of that model
  (its default sampling run on the ``train`` condition set, labelled with the masks they were
  generated from, shuffled with the downstream seed); ``synth_only-<model>`` uses the synthetic
  slices alone. Scored on the real ``test_select`` slices: per-channel Dice / Jaccard / HD95 / ASD
  (MONAI, distances in mm from the slice pixel spacing), mDSC and mHD95 over the channels present.
* :func:`evaluate_run` (rule ``metrics``): one sampling run on the ``eval`` condition set against the
  real slices whose masks and prompts conditioned it (one generated image per real slice):

  - ``fid`` / ``kid``: torch-fidelity's InceptionV3, only with local weights (else ``status``
    "unavailable: no Inception weights ...", value null);
  - ``fd_self``: Frechet distance + KID on the encoder of the downstream segmenter trained on real
    slices (setting ``metrics.extractor_setting``), the embedded study's medical-feature extractor;
  - ``windowed``: that FD per CT window (MedSyn2 Table 1, axial plane for 2D studies);
  - ``pairs``: SSIM / PSNR of each generated image against the real image of its condition;
  - ``mask_fidelity``: the same segmenter re-segments the generated images; Dice / Jaccard / HD95 /
    ASD against the conditioning masks (``generated_vs_gt``) and, as the segmenter's own error
    floor, on the real images (``real_vs_gt``) (MedSyn2 Table 7);
  - ``controllability`` (models trained with graded prompts): the severity grade measured on the
    re-segmented generated image (liver fraction, :mod:`medsynth.generator.data`) against the
    prompted grade; accuracy and confusion counts; the real images' accuracy beside it.
* :func:`evaluate_volume_run` (3D studies): the same record for a sampling run of volumes
  ``(N, 1, X, Y, Z)`` against the real volumes of its condition set, with the 2D self-trained
  extractor applied to slices: ``windowed`` holds MedSyn2 Table 1's FD per CT window x plane (XY / YZ /
  ZX central 40 % slices, :func:`medsynth.metrics.per_plane_windowed_fd`) with per-window and overall
  means; ``fd_self`` is the unwindowed 2.5D FD (mean over the planes, each plane beside it); slices
  are resized to the extractor's input size; ``mask_fidelity`` re-segments the volumes axial slice by
  axial slice and scores them in 3D.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsynth.fsutil import write_text_atomic
from medsynth.generator.data import load_slices, select_rows
from medsynth.launch import is_main_process, resolve_device
from medsynth.metrics.masks import channel_means
from medsynth.names import MEDDIFF_KINDS

__all__ = ["pixel_spacing", "voxel_spacing", "extractor_input_size", "run_downstream", "evaluate_run",
           "evaluate_volume_run", "SELF_EXTRACTOR"]

log = logging.getLogger(__name__)

#: torch-fidelity name under which the self-trained encoder is registered.
SELF_EXTRACTOR = "medsynth-segmenter-encoder"


def pixel_spacing(grid_cfg: Mapping, slice_size: int) -> list[float]:
    """In-plane spacing (mm) of the 2D slices: the registration grid's x/y extent over the slice size."""
    spacing, size = grid_cfg["spacing_mm"], grid_cfg["size"]
    return [float(spacing[i]) * float(size[i]) / float(slice_size) for i in (0, 1)]


def voxel_spacing(grid_cfg: Mapping, volume_size: Sequence[int]) -> list[float]:
    """Voxel spacing (mm) of the 3D training volumes: the registration grid's extent over the volume size."""
    spacing, size = grid_cfg["spacing_mm"], grid_cfg["size"]
    return [float(spacing[i]) * float(size[i]) / float(volume_size[i]) for i in range(len(volume_size))]


def _finite(value):
    """JSON-safe float (NaN / inf -> None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _clean(obj):
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _write_json(path: str | Path, payload: Mapping) -> None:
    write_text_atomic(path, json.dumps(_clean(payload), indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ downstream


def _meddiff_filter(images: np.ndarray, masks: np.ndarray, real_images: np.ndarray, extractor: str | Path | None,
                    cfg: Mapping) -> tuple[np.ndarray, np.ndarray, dict]:
    """MedDiff-FT quality filter + mask erosion: keep the synthetic slices whose encoder features lie
    closest to the real training slices' (``keep_fraction``), erode their labels (``erosion``)."""
    from medsynth.downstream import encoder_features, load_segmenter
    from medsynth.sample.meddiff import erode_masks, quality_filter

    if extractor is None:
        raise ValueError("the MedDiff-FT filter needs the self-trained feature extractor (downstream real segmenter)")
    segmenter = load_segmenter(extractor)
    keep, scores = quality_filter(encoder_features(segmenter, torch.from_numpy(real_images)),
                                  encoder_features(segmenter, torch.from_numpy(images)),
                                  keep_fraction=float(cfg.get("keep_fraction", 0.5)),
                                  method=str(cfg.get("filter_method", "mahalanobis")))
    keep = keep.numpy()
    eroded = erode_masks(torch.from_numpy(masks[keep] > 0), int(cfg.get("erosion", 1))).numpy()
    info = {"kept": int(keep.sum()), "of": int(len(keep)), "erosion": int(cfg.get("erosion", 1)),
            "method": str(cfg.get("filter_method", "mahalanobis"))}
    return images[keep], eroded.astype(np.uint8), info


def run_downstream(shards: Sequence[str], synthetic: str | None, setting: str, cfg: Mapping, outputs,
                   evaluation_json: str | Path, grid_cfg: Mapping, slice_size: int,
                   extractor: str | Path | None = None) -> dict:
    """Train and score one downstream setting (module docstring); returns the evaluation record.
    ``outputs``: where the segmenter trains (:class:`medsynth.train.TrainOutputs`, or a folder)."""
    from medsynth.downstream import compose_setting, evaluate_segmenter, setting_augments, train_segmenter
    from medsynth.io.generated import load_generated

    kind, _, model_name = setting.partition("-")
    meddiff = kind in MEDDIFF_KINDS
    index, images, masks, names = load_slices(shards)
    train_rows = select_rows(index, cfg.get("train_select") or {"split": ["train"]})
    test_rows = select_rows(index, cfg.get("test_select") or {"split": ["test"]})
    if not len(test_rows):
        raise ValueError(f"downstream.test_select {cfg.get('test_select')} keeps no slice: nothing to score on")
    real = (images[train_rows], (masks[train_rows] > 0).astype(np.float32))
    synth, filtered = None, None
    if synthetic:
        s_images, s_masks, s_names = load_generated(synthetic)
        if s_names and list(s_names) != list(names):
            raise ValueError(f"{synthetic}: condition channels {s_names} differ from the training sets' {names}")
        if kind == "real_synth_mgf":
            s_images, s_masks, filtered = _meddiff_filter(s_images, s_masks, real[0], extractor,
                                                          dict(cfg.get("meddiff") or {}))
        order = torch.randperm(len(s_images), generator=torch.Generator().manual_seed(int(cfg.get("seed", 0))))
        synth = (s_images[order.numpy()], s_masks[order.numpy()].astype(np.float32))
    x, y, summary = compose_setting("real_synth" if meddiff else kind, real, synth,
                                    float(cfg.get("synthetic_fraction", 0.3)), int(cfg.get("seed", 0)))
    from medsynth.downstream import DEFAULT_TRAIN

    from medsynth.train.loop import run_fingerprint

    train_cfg = {k: v for k, v in cfg.items() if k in DEFAULT_TRAIN}
    train_cfg["fingerprint"] = run_fingerprint(dict(cfg), setting, files=[*shards, *([synthetic] if synthetic else [])])
    model, result = train_segmenter(x, y, train_cfg, outputs, augment=setting_augments("real_synth" if meddiff else kind))
    if result.status != "completed":
        raise SystemExit(result.exit_code)  # preempted: checkpoint written, rerun resumes
    if not is_main_process():
        return {}  # a worker of a multi-process run: the main process scores and writes
    spacing = pixel_spacing(grid_cfg, slice_size)
    scores = evaluate_segmenter(model, images[test_rows], (masks[test_rows] > 0).astype(np.float32), names,
                                spacing=spacing)
    record = {"setting": setting, "kind": kind, "synthetic_model": model_name or None,
              "n_train_real": summary["n_real"], "n_train_synthetic": summary["n_synthetic"],
              "n_test": int(len(test_rows)), "steps": int(result.step), "seconds_per_step": result.seconds_per_step,
              "meddiff_filter": filtered if synthetic else None,
              "mdsc": scores["mdsc"], "mhd95": scores["mhd95"], "hd95_unit": scores["hd95_unit"],
              "spacing_mm": spacing, "mean": channel_means(scores["channels"]), "channels": scores["channels"]}
    _write_json(evaluation_json, record)
    log.info("downstream %s: mDSC %.4f, mHD95 %s", setting, scores["mdsc"], scores["mhd95"])
    return record


# ------------------------------------------------------------------------------------------------ metrics
class _SegmenterEncoder(nn.Module):
    """``forward(x) -> (B, D)``: pooled deepest features of a downstream segmenter (for torch-fidelity).

    ``size``: ``(H, W)`` the images are resized to first (bilinear, antialiased) when they differ.
    """

    def __init__(self, segmenter: nn.Module, size: Sequence[int] | None = None):
        super().__init__()
        self.segmenter = segmenter
        self.size = tuple(int(v) for v in size) if size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from medsynth.downstream import encoder_features

        return encoder_features(self.segmenter, _resize_slices(x, self.size))


def _resize_slices(x: torch.Tensor, size: Sequence[int] | None, mode: str = "bilinear") -> torch.Tensor:
    """``(B, C, H, W)`` resized to ``size`` (unchanged when ``None`` or equal)."""
    if size is None or tuple(x.shape[2:]) == tuple(size):
        return x
    if mode == "nearest":
        return torch.nn.functional.interpolate(x.float(), size=tuple(size), mode="nearest")
    return torch.nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=False, antialias=True)


def extractor_input_size(segmenter: nn.Module, metrics_cfg: Mapping) -> list[int] | None:
    """``(H, W)`` the self-trained extractor takes: ``metrics.extractor_size``, else the segmenter's own
    ``params.img_size`` (UNETR / SwinUNETR), else ``None`` (any size: slices go in as they are)."""
    size = metrics_cfg.get("extractor_size")
    if size is None:
        size = ((getattr(segmenter, "segmenter_record", None) or {}).get("model", {}).get("params", {})
                .get("img_size"))
    if size is None:
        return None
    size = [int(size)] * 2 if isinstance(size, (int, float)) else [int(v) for v in size]
    if len(size) != 2:
        raise ValueError(f"metrics.extractor_size must be one number or [H, W], got {size}")
    return size


def _controllability(pred: torch.Tensor, names: Sequence[str], prompted: Sequence[str], severity_cfg: Mapping) -> dict:
    from medsynth.generator.data import DEFAULT_SEVERITY, severity_fractions, severity_grades
    from medsynth.models.prompts import SEVERITY_WORDS

    sev = {**DEFAULT_SEVERITY, **dict(severity_cfg or {})}
    fractions = severity_fractions(pred.float().numpy(), names, sev["organ"])
    measured = severity_grades(fractions, sev["thresholds"])
    wanted = np.array([SEVERITY_WORDS.index(w) for w in prompted])
    confusion = {SEVERITY_WORDS[p]: {SEVERITY_WORDS[m]: int(((wanted == p) & (measured == m)).sum())
                                     for m in range(len(SEVERITY_WORDS))} for p in range(len(SEVERITY_WORDS))}
    return {"accuracy": float((measured == wanted).mean()), "n": int(len(wanted)), "organ": sev["organ"],
            "thresholds": list(sev["thresholds"]), "confusion_prompted_to_measured": confusion}


def _paired_sets(shards: Sequence[str], select: Mapping, generated_path: str | Path):
    """The real condition set and the run generated for it: ``(index, rows, names, real, real_masks, fake)``.

    Raises ``ValueError`` when the generated set does not pair with the real one (count, shape,
    condition channels, or the masks it was conditioned on).
    """
    from medsynth.io.generated import load_generated

    index, images, masks, names = load_slices(shards)
    rows = select_rows(index, select)
    real, real_masks = images[rows].astype(np.float32), masks[rows] > 0
    fake, fake_masks, fake_names = load_generated(generated_path)
    if fake.shape != real.shape or (fake_names and list(fake_names) != list(names)):
        raise ValueError(f"{generated_path}: samples {fake.shape} / channels {fake_names} do not match the real set "
                         f"{real.shape} / channels {names} of the condition set")
    if not np.array_equal(fake_masks.astype(bool), real_masks):
        raise ValueError(f"{generated_path} was conditioned on other masks than the real set of {dict(select)}")
    return index, rows, names, real, real_masks, fake


def evaluate_run(generated_path: str | Path, index_csv: str | Path, summary_json: str | Path, shards: Sequence[str],
                 extractor_dir: str | Path, out_json: str | Path, metrics_cfg: Mapping, intensity_cfg: Mapping,
                 select: Mapping, severity_cfg: Mapping | None, severity_prompt: bool, grid_cfg: Mapping,
                 slice_size: int, model: str, run: str) -> dict:
    """Every metric of one sampling run (module docstring); writes and returns the record."""
    import pandas as pd

    from medsynth.downstream import load_segmenter, predict_masks
    from medsynth.metrics import (
        frechet_metrics,
        image_metrics,
        inception_fid,
        mask_metrics,
        per_window_fd,
        register_module_extractor,
    )

    torch.set_num_threads(1)
    index, rows, names, real, real_masks, fake = _paired_sets(shards, select, generated_path)
    sampled = pd.read_csv(index_csv, keep_default_na=False)
    summary = json.loads(Path(summary_json).read_text())
    device = resolve_device(metrics_cfg.get("device", "auto"), "metrics.device")
    cuda = device.type == "cuda"  # torch-fidelity's feature extraction on the GPU
    segmenter = load_segmenter(extractor_dir).to(device)
    extractor_name = register_module_extractor(SELF_EXTRACTOR, _SegmenterEncoder(segmenter))
    real01, fake01 = torch.from_numpy((real + 1.0) / 2.0), torch.from_numpy((fake + 1.0) / 2.0)
    n = len(real)
    kid_size = max(2, min(int(metrics_cfg.get("kid_subset_size", 50)), n))
    batch = int(metrics_cfg.get("batch_size", 64))
    setting = Path(extractor_dir).parent.name
    extractor_label = f"self-trained {segmenter.segmenter_record['model']['type']} encoder, downstream '{setting}'"

    fd = frechet_metrics(real01, fake01, extractor_name, kid=True, kid_subset_size=kid_size, batch_size=batch, cuda=cuda)
    inception = inception_fid(real01, fake01, metrics_cfg.get("inception_weights"), kid_subset_size=kid_size,
                              batch_size=batch, cuda=cuda)
    modalities = set(index.iloc[rows]["modality"].astype(str))
    windowed: list[dict] = []
    if modalities == {"CT"}:
        windows = {k: tuple(v) for k, v in (intensity_cfg.get("windows") or {}).items()}
        for row in per_window_fd(real, fake, tuple(intensity_cfg["ct_hu_range"]), windows, extractor_name,
                                 kid=False, batch_size=batch, cuda=cuda):
            windowed.append({"window": row["window"], "plane": "XY", "fd": row.get("fd"), "status": row.get("status")})
    pairs = image_metrics(torch.from_numpy(fake), torch.from_numpy(real))
    spacing = pixel_spacing(grid_cfg, slice_size)
    pred_fake = predict_masks(segmenter, fake)
    pred_real = predict_masks(segmenter, real)
    ref = torch.from_numpy(real_masks)
    record = {
        "model": model, "run": run, "n_real": n, "n_generated": int(len(fake)),
        "image_size": list(real.shape[2:]), "modalities": sorted(modalities),
        "sampling": {k: summary.get(k) for k in ("sampler", "steps", "nfe", "network_evals", "seconds",
                                                  "seconds_per_sample")},
        "hu_qc": summary.get("hu_qc", {"enabled": False}),
        "fid": {"value": inception.get("fid"), "status": inception["status"]},
        "kid": {"mean": inception.get("kid_mean"), "std": inception.get("kid_std"), "status": inception["status"]},
        "fd_self": {"value": fd["fd"], "kid_mean": fd["kid_mean"], "kid_std": fd["kid_std"],
                    "kid_subset_size": kid_size, "extractor": extractor_label},
        "windowed": windowed if windowed else [],
        "windowed_status": "ok" if windowed else f"not applicable: modalities {sorted(modalities)} (CT windows)",
        "pairs": {"ssim": pairs["ssim"], "psnr": pairs["psnr"], "l1": pairs["l1"]},
        "mask_fidelity": {"segmenter": extractor_label, "distance_unit": "mm", "spacing_mm": spacing,
                          "generated_vs_gt": mask_metrics(pred_fake, ref, list(names), spacing=spacing),
                          "real_vs_gt": mask_metrics(pred_real, ref, list(names), spacing=spacing)},
    }
    record["mask_fidelity"]["mean_generated_vs_gt"] = channel_means(record["mask_fidelity"]["generated_vs_gt"])
    record["mask_fidelity"]["mean_real_vs_gt"] = channel_means(record["mask_fidelity"]["real_vs_gt"])
    if severity_prompt and "severity" in sampled.columns:
        prompted = sampled["severity"].astype(str).tolist()
        record["controllability"] = {"generated": _controllability(pred_fake, names, prompted, severity_cfg),
                                     "real": _controllability(pred_real, names, prompted, severity_cfg)}
    else:
        record["controllability"] = {"status": "not applicable: the model was trained without graded prompts"}
    _write_json(out_json, record)
    log.info("metrics %s/%s: FD %.4f (%s), FID %s", model, run, fd["fd"], extractor_label, inception["status"])
    return record


# ------------------------------------------------------------------------------------------------ volume metrics
def _resegment_volumes(segmenter: nn.Module, volumes: np.ndarray, size: Sequence[int] | None,
                       batch_size: int) -> torch.Tensor:
    """Binary masks ``(N, C, X, Y, Z)`` of 2D segmenter predictions on every axial (XY) slice of the volumes."""
    from medsynth.downstream import predict_masks

    x = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))
    n, _, sx, sy, sz = x.shape
    slices = x.permute(0, 4, 1, 2, 3).reshape(n * sz, 1, sx, sy)  # axial slices along z
    pred = predict_masks(segmenter, _resize_slices(slices, size), batch_size=batch_size)
    pred = _resize_slices(pred.float(), (sx, sy), mode="nearest") > 0.5
    return pred.reshape(n, sz, -1, sx, sy).permute(0, 2, 3, 4, 1).contiguous()


def evaluate_volume_run(generated_path: str | Path, index_csv: str | Path, summary_json: str | Path,
                        shards: Sequence[str], extractor_dir: str | Path, out_json: str | Path, metrics_cfg: Mapping,
                        intensity_cfg: Mapping, select: Mapping, model: str, run: str,
                        grid_cfg: Mapping | None = None) -> dict:
    """Metrics of one sampling run of volumes (module docstring) in :func:`evaluate_run`'s JSON layout.

    ``shards``: the 3D training-set shards (``trainsets/volumes``); ``select`` the condition set the
    run was sampled for (one generated volume per real volume, same masks). ``metrics_cfg`` keys:
    ``batch_size``, ``kid_subset_size``, ``central_fraction`` (of the slices per axis, MAISI 2.5D: 0.4),
    ``extractor_size`` (optional ``[H, W]`` of the extractor's input), ``inception_weights``;
    ``intensity_cfg``: ``ct_hu_range`` and ``windows`` (``{name: [level, width]}``). ``grid_cfg``
    (``spacing_mm``, ``size`` of the registration grid) gives mm distances; without it they are in voxels.
    ``windowed`` rows ``{"window", "plane", "fd", "status"}`` use MedSyn2 Table 1's plane labels XY / YZ /
    ZX (``plane: "mean"``: mean over the planes of a window; ``window: "mean"``: over all cells).
    """
    from medsynth.downstream import load_segmenter
    from medsynth.metrics import (
        frechet_metrics,
        image_metrics,
        inception_fid,
        mask_metrics,
        per_plane_windowed_fd,
        register_module_extractor,
    )
    from medsynth.metrics.frechet import PLANE_LABELS, PLANES, central_slices

    torch.set_num_threads(1)
    index, rows, names, real, real_masks, fake = _paired_sets(shards, select, generated_path)
    if real.ndim != 5:
        raise ValueError(f"{list(shards)}: expected volumes (N, 1, X, Y, Z), got {real.shape}; 2D runs: evaluate_run")
    summary = json.loads(Path(summary_json).read_text())
    import pandas as pd

    sampled_rows = len(pd.read_csv(index_csv, keep_default_na=False))
    if sampled_rows != len(fake):
        raise ValueError(f"{index_csv}: {sampled_rows} rows for {len(fake)} generated volumes")
    device = resolve_device(metrics_cfg.get("device", "auto"), "metrics.device")
    cuda = device.type == "cuda"  # torch-fidelity's feature extraction on the GPU
    segmenter = load_segmenter(extractor_dir).to(device)
    size = extractor_input_size(segmenter, metrics_cfg)
    extractor_name = register_module_extractor(SELF_EXTRACTOR, _SegmenterEncoder(segmenter, size))
    setting = Path(extractor_dir).parent.name
    extractor_label = f"self-trained {segmenter.segmenter_record['model']['type']} encoder, downstream '{setting}'"
    batch = int(metrics_cfg.get("batch_size", 64))
    fraction = float(metrics_cfg.get("central_fraction", 0.4))
    real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)

    # unwindowed 2.5D FD (+ KID) per plane on the central slices, and its mean over the planes
    per_plane, n_slices = {}, None
    for plane, axis in PLANES.items():
        r01 = (central_slices(real_t, axis, fraction) + 1.0) / 2.0
        f01 = (central_slices(fake_t, axis, fraction) + 1.0) / 2.0
        n_slices = min(len(r01), len(f01)) if n_slices is None else min(n_slices, len(r01), len(f01))
        kid_size = max(2, min(int(metrics_cfg.get("kid_subset_size", 50)), len(r01), len(f01)))
        res = frechet_metrics(r01, f01, extractor_name, kid=True, kid_subset_size=kid_size, batch_size=batch, cuda=cuda)
        per_plane[PLANE_LABELS[plane]] = {k: res[k] for k in ("fd", "kid_mean", "kid_std", "n_real", "n_fake")}
    fd_mean = {k: float(np.mean([p[k] for p in per_plane.values()])) for k in ("fd", "kid_mean", "kid_std")}
    axial = PLANES["axial"]
    inception = inception_fid((central_slices(real_t, axial, fraction) + 1.0) / 2.0,
                              (central_slices(fake_t, axial, fraction) + 1.0) / 2.0,
                              metrics_cfg.get("inception_weights"), kid_subset_size=max(2, min(
                                  int(metrics_cfg.get("kid_subset_size", 50)), n_slices)), batch_size=batch, cuda=cuda)

    modalities = set(index.iloc[rows]["modality"].astype(str))
    windowed: list[dict] = []
    if modalities == {"CT"}:
        windows = {k: tuple(v) for k, v in (intensity_cfg.get("windows") or {}).items()}
        for row in per_plane_windowed_fd(real_t, fake_t, tuple(intensity_cfg["ct_hu_range"]), windows, extractor_name,
                                         central_fraction=fraction, kid=False, batch_size=batch, cuda=cuda):
            windowed.append({"window": row["window"], "plane": PLANE_LABELS.get(row["plane"], row["plane"]),
                             "fd": row.get("fd"), "n_real": row.get("n_real"), "n_fake": row.get("n_fake"),
                             "status": row.get("status")})
    pairs = image_metrics(fake_t, real_t)
    spacing = voxel_spacing(grid_cfg, real.shape[2:]) if grid_cfg else None
    pred_fake = _resegment_volumes(segmenter, fake, size, batch)
    pred_real = _resegment_volumes(segmenter, real, size, batch)
    ref = torch.from_numpy(real_masks)
    record = {
        "model": model, "run": run, "n_real": int(len(real)), "n_generated": int(len(fake)),
        "image_size": list(real.shape[2:]), "spatial_dims": 3, "modalities": sorted(modalities),
        "sampling": {k: summary.get(k) for k in ("sampler", "steps", "nfe", "network_evals", "seconds",
                                                  "seconds_per_sample")},
        "hu_qc": summary.get("hu_qc", {"enabled": False}),
        "fid": {"value": inception.get("fid"), "status": inception["status"], "plane": "XY"},
        "kid": {"mean": inception.get("kid_mean"), "std": inception.get("kid_std"), "status": inception["status"],
                "plane": "XY"},
        "fd_self": {"value": fd_mean["fd"], "kid_mean": fd_mean["kid_mean"], "kid_std": fd_mean["kid_std"],
                    "per_plane": per_plane, "central_fraction": fraction, "extractor_input_size": size,
                    "extractor": extractor_label},
        "windowed": windowed,
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
    _write_json(out_json, record)
    log.info("volume metrics %s/%s: 2.5D FD %.4f (%s), FID %s", model, run, fd_mean["fd"], extractor_label,
             inception["status"])
    return record
