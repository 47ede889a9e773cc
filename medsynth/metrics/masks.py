"""Mask and image agreement metrics, with MONAI only.

* :func:`mask_metrics`: per channel Dice (:class:`monai.metrics.DiceMetric`), Jaccard
  (:class:`~monai.metrics.MeanIoU`), HD95 (:class:`~monai.metrics.HausdorffDistanceMetric`,
  ``percentile=95``) and ASD (:class:`~monai.metrics.SurfaceDistanceMetric`, symmetric) of binary
  ``[N, C, *spatial]`` masks, averaged over samples whose reference is non-empty. Distances are in
  voxels by default, in mm with ``spacing``. Used for MedSyn2 Table 6 (tokenizer reconstruction of
  masks) and Table 7 (re-segmentation of synthetic images against their conditioning masks: mDSC,
  mHD95 via :func:`mean_over_channels`).
* :func:`image_metrics`: SSIM (:class:`~monai.metrics.SSIMMetric`, data range 2) and PSNR
  (:class:`~monai.metrics.PSNRMetric`, ``max_val`` 2) of images in [-1, 1], plus L1 (MedSyn2 Table 6).

Empty references: a channel whose reference is empty in every sample has NaN values and ``status:
"empty"``. A sample whose prediction is empty but reference is not counts towards Dice/Jaccard (as 0)
and ``n_pred_empty``, not towards the distances (undefined there).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["channel_means", "image_metric_values", "image_metrics", "mask_metric_values", "mask_metrics",
           "mean_over_channels"]

Spacing = float | Sequence[float] | None


def _mean(values: torch.Tensor) -> float:
    values = values.double()
    return float(values.mean()) if values.numel() else math.nan


def image_metric_values(recon: torch.Tensor, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-sample SSIM / PSNR (data range 2) and mean absolute error of reconstructions against images."""
    from monai.metrics import PSNRMetric, SSIMMetric

    from medsynth.vae.losses import ssim_window  # here, not at module level: medsynth.vae imports this module

    spatial = tuple(images.shape[2:])
    ssim = SSIMMetric(spatial_dims=len(spatial), data_range=2.0, win_size=ssim_window(spatial), reduction="none")
    psnr = PSNRMetric(max_val=2.0, reduction="none")
    per_sample = (recon - images).abs().double().flatten(1).mean(dim=1)
    return {"ssim": ssim(recon, images).double().reshape(-1).numpy(),
            "psnr": psnr(recon, images).double().reshape(-1).numpy(), "l1": per_sample.numpy()}


def image_metrics(recon: torch.Tensor, images: torch.Tensor) -> dict:
    """SSIM / PSNR (data range 2) and L1 of reconstructions against images, averaged over samples."""
    values = image_metric_values(recon, images)
    return {"ssim": _mean(torch.from_numpy(values["ssim"])), "psnr": _mean(torch.from_numpy(values["psnr"])),
            "l1": float((recon - images).abs().mean()), "n": int(len(images))}


def mask_metric_values(pred: torch.Tensor, ref: torch.Tensor, spacing: Spacing = None) -> dict[str, torch.Tensor]:
    """Per-sample, per-channel ``[N, C]`` Dice / Jaccard / HD95 / ASD of binary masks, NaN where a sample does
    not count (no reference for Dice / Jaccard; no reference or no prediction for the distances); plus
    the ``[N, C]`` booleans ``has_ref`` and ``pred_empty`` (reference present, prediction empty)."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric

    pred = pred.float() if isinstance(pred, torch.Tensor) else torch.as_tensor(np.asarray(pred), dtype=torch.float32)
    ref = ref.float() if isinstance(ref, torch.Tensor) else torch.as_tensor(np.asarray(ref), dtype=torch.float32)
    if spacing is not None and not np.isscalar(spacing):
        spacing = [float(s) for s in spacing]
        if len(spacing) != ref.ndim - 2:
            raise ValueError(f"spacing has {len(spacing)} values for {ref.ndim - 2} spatial dimensions")
    with warnings.catch_warnings():  # empty channels: MONAI warns and returns nan/inf, handled below
        warnings.simplefilter("ignore")
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(pred, ref)
        iou = MeanIoU(include_background=True, reduction="none", ignore_empty=True)(pred, ref)
        hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            pred, ref, spacing=spacing)
        asd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(
            pred, ref, spacing=spacing)
    dims = tuple(range(2, ref.ndim))
    has_ref, pred_any = ref.amax(dim=dims) > 0, pred.amax(dim=dims) > 0
    both = has_ref & pred_any
    nan = torch.tensor(math.nan, dtype=torch.float64)
    return {"dice": torch.where(has_ref, dice.double(), nan), "jaccard": torch.where(has_ref, iou.double(), nan),
            "hd95": torch.where(both, hd95.double(), nan), "asd": torch.where(both, asd.double(), nan),
            "has_ref": has_ref, "pred_empty": has_ref & ~pred_any}


def mask_metrics(pred: torch.Tensor, ref: torch.Tensor, names: list[str], spacing: Spacing = None,
                 values: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Per-channel Dice/Jaccard/HD95/ASD of binary ``pred`` against binary ``ref`` (``[N, C, *spatial]``).

    ``spacing``: voxel size (one number, or one per spatial axis) for HD95/ASD in physical units;
    ``None`` = unit spacing (voxels). ``values``: the :func:`mask_metric_values` of the same masks, when
    the caller has them already. Returns ``{name: {"dice", "jaccard", "hd95", "asd", "n_reference",
    "n_pred_empty", "status"}}``.
    """
    values = values if values is not None else mask_metric_values(pred, ref, spacing)
    has_ref = values["has_ref"]
    out = {}
    for c, name in enumerate(names):
        rows = has_ref[:, c]
        counted = rows & ~values["pred_empty"][:, c]
        n_ref = int(rows.sum())
        out[name] = {
            "dice": _mean(values["dice"][rows, c]),
            "jaccard": _mean(values["jaccard"][rows, c]),
            "hd95": _mean(values["hd95"][counted, c]),
            "asd": _mean(values["asd"][counted, c]),
            "n_reference": n_ref,
            "n_pred_empty": int(values["pred_empty"][:, c].sum()),
            "status": "ok" if n_ref else "empty",
        }
    return out


def channel_means(channels: Mapping[str, Mapping], keys: Sequence[str] = ("dice", "jaccard", "hd95", "asd"),
                  missing: float | None = None) -> dict:
    """Mean of each metric of ``keys`` over the channels that have a reference (``status`` ok and
    ``n_reference`` > 0, where given), skipping None and non-finite values; ``missing`` where no channel
    has a value. Plus ``n_channels``, the channels averaged over. The one channel mean of the package
    (metrics JSON, downstream evaluation, :func:`mean_over_channels`)."""
    ok = [c for c in channels.values() if c.get("status", "ok") == "ok" and c.get("n_reference", 1)]
    out: dict = {}
    for key in keys:
        vals = [float(c[key]) for c in ok if c.get(key) is not None and math.isfinite(float(c[key]))]
        out[key] = float(np.mean(vals)) if vals else missing
    out["n_channels"] = len(ok)
    return out


def mean_over_channels(result: dict) -> dict:
    """Channel means of a :func:`mask_metrics` result: ``{"mDSC", "mJaccard", "mHD95", "mASD", "n_channels",
    "channels", "status"}`` over channels with ``status: "ok"`` (NaN values skipped per metric).

    ``status`` is ``"ok"``, or ``"empty"`` (all values NaN) when no channel has a reference.
    """
    means = channel_means(result, missing=math.nan)
    ok = [name for name, r in result.items() if r.get("status") == "ok"]
    out = {label: means[key] for key, label in (("dice", "mDSC"), ("jaccard", "mJaccard"), ("hd95", "mHD95"),
                                                 ("asd", "mASD"))}
    out.update(n_channels=means["n_channels"], channels=ok, status="ok" if ok else "empty")
    return out
