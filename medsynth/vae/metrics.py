"""Tokenizer reconstruction analysis (MedSyn2 Supp. 7.3, Fig. 10 and Table 6), with MONAI metrics only.

* Images (``[N, 1, *spatial]`` in [-1, 1]): deterministic reconstruction ``decode(encode(x).mean)``,
  clipped to [-1, 1]; SSIM (:class:`monai.metrics.SSIMMetric`, data range 2) and PSNR
  (:class:`monai.metrics.PSNRMetric`, ``max_val`` 2), averaged over samples (PSNR is ``inf`` for a
  perfect reconstruction).
* Masks (``[N, C, *spatial]`` binary channels mapped to [-0.5, 0.5]): as in MedSyn2 every mask goes
  through the *same* image encoder/decoder, one channel at a time as a single-channel image; the
  output is thresholded at 0. Per channel: Dice (:class:`~monai.metrics.DiceMetric`), Jaccard
  (:class:`~monai.metrics.MeanIoU`), HD95 (:class:`~monai.metrics.HausdorffDistanceMetric`,
  ``percentile=95``) and ASD (:class:`~monai.metrics.SurfaceDistanceMetric`, symmetric), in voxels
  (unit spacing) like Table 6, computed per sample and averaged over samples whose reference is
  non-empty. Dice/Jaccard are fractions (Table 6 prints %). A channel whose reference is empty in
  every sample is reported with NaN values and ``status: "empty"``. Samples where the reconstructed
  mask is empty but the reference is not count towards Dice/Jaccard (as 0) and ``n_pred_empty``,
  but not towards the distances (undefined there).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medsynth.metrics.masks import image_metric_values, image_metrics, mask_metric_values, mask_metrics
from medsynth.vae.models import model_device, reconstruct

__all__ = ["reconstruct_batched", "reconstruction_metrics"]


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x.float() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


@torch.no_grad()
def reconstruct_batched(model: nn.Module, x: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """:func:`medsynth.vae.models.reconstruct` over mini-batches, in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        device = model_device(model)
        return torch.cat([reconstruct(model, x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def reconstruction_metrics(model: nn.Module, images: torch.Tensor | np.ndarray,
                           masks: torch.Tensor | np.ndarray | None = None, *, batch_size: int = 8,
                           mask_names: list[str] | None = None, threshold: float = 0.0,
                           return_values: bool = False) -> dict:
    """MedSyn2 Supp. 7.3 reconstruction metrics of ``model`` on images and (optionally) masks.

    Returns ``{"image": {"ssim", "psnr", "l1", "n"}, "masks": {name: {"dice", "jaccard", "hd95",
    "asd", "n_reference", "n_pred_empty", "status"}}}``; mask names default to ``mask_0``, ...
    With ``return_values``, also ``"values"``: the per-sample image metrics and the per-sample, per-channel
    mask metrics (:func:`~medsynth.metrics.masks.image_metric_values` / ``mask_metric_values``).
    """
    images = _as_tensor(images)
    recon = reconstruct_batched(model, images, batch_size).clamp(-1.0, 1.0)
    result: dict = {"image": image_metrics(recon, images), "masks": {}}
    if return_values:
        result["values"] = {"image": image_metric_values(recon, images), "masks": None}
    if masks is None:
        return result
    masks = _as_tensor(masks)
    n, c = masks.shape[:2]
    names = list(mask_names) if mask_names is not None else [f"mask_{i}" for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} mask_names for {c} mask channels")
    if c == 0:
        return result
    flat = masks.reshape(n * c, 1, *masks.shape[2:])
    recon_masks = reconstruct_batched(model, flat, batch_size).reshape(n, c, *masks.shape[2:])
    values = mask_metric_values(recon_masks > threshold, masks > 0)
    result["masks"] = mask_metrics(recon_masks > threshold, masks > 0, names, values=values)
    if return_values:
        result["values"]["masks"] = values
    return result
