"""MAISI-v2 region-specific contrastive loss (MAISI-v2 "Key Designs" 3 and "Loss & Training").

Two outputs are produced from the same noisy input: ``G(x_t, c_orig)`` with the original mask and
``G(x_t, c_perturb)`` with the ROI label replaced by its surrounding label (e.g. tumour -> organ).

    D_roi = || (G_orig - G_perturb) * m ||_{1,m}                    (mean |.| over ROI voxels)
    L_roi = -min(D_roi, delta),  delta = 2                           (ROI sensitivity)
    L_bg  = || (G_orig - G_perturb) * m^- ||_{1,m^-},  m^- = 1 - dilate(m)   (background consistency)
    L     = L_flow + lambda_contrast (L_roi + L_bg),  lambda = 0.01 (epochs 0-29), then 0.001 (30-59)

Readings:
* ``||.||_{1,m}`` is the L1 norm normalised by the mask size: the sum of ``|diff|`` over ROI voxels and
  all channels divided by (ROI voxels x channels), computed per sample and then averaged over the
  batch (a public derivative of NVIDIA's training script pools the batch instead; identical at batch
  size 1, MAISI's ControlNet setting). A sample with an empty ROI contributes 0.
* ``dilate`` is a binary dilation with a cube of radius ``dilation`` voxels (default 1, i.e. a 3^d
  structuring element, as that script's ``dilate(..., filter_size=3)``), applied on the mask's own
  grid; both masks are then resized to the prediction grid with nearest-neighbour sampling (latent
  grids are coarser than label grids).
* The background term compares the two outputs, as the paper writes it. The script mentioned above
  instead compares ``G_perturb`` with the flow target in the background; pass that target as
  ``background_reference`` to reproduce it.
* ``lambda`` switches by epoch (the paper trains 60 epochs: 30 at 0.01, 30 at 0.001).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "MAISI_V2_DELTA",
    "MAISI_V2_LAMBDA_SCHEDULE",
    "RegionContrastiveLoss",
    "dilate_mask",
    "region_contrastive_loss",
    "contrastive_lambda",
]

MAISI_V2_DELTA: float = 2.0
#: ``(first epoch, lambda)`` pairs: 0.01 from epoch 0, 0.001 from epoch 30.
MAISI_V2_LAMBDA_SCHEDULE: tuple[tuple[int, float], ...] = ((0, 0.01), (30, 0.001))


class RegionContrastiveLoss(NamedTuple):
    """``total = roi + bg`` (weight with :func:`contrastive_lambda`), and the unclamped ``d_roi``."""

    total: torch.Tensor
    roi: torch.Tensor
    bg: torch.Tensor
    d_roi: torch.Tensor


def _as_channel_mask(mask: torch.Tensor, spatial_ndim: int) -> torch.Tensor:
    m = mask.float()
    if m.ndim == spatial_ndim + 1:  # (B, *spatial)
        m = m.unsqueeze(1)
    if m.ndim != spatial_ndim + 2 or m.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, *spatial) or (B, *spatial), got {tuple(mask.shape)}")
    return (m > 0.5).float()


def dilate_mask(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Binary dilation of a ``(B, 1, *spatial)`` mask (2D or 3D) by a cube of the given radius."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    pool = {2: F.max_pool2d, 3: F.max_pool3d}.get(mask.ndim - 2)
    if pool is None:
        raise ValueError(f"dilation supports 2D/3D masks, got {tuple(mask.shape)}")
    return pool(mask, kernel_size=k, stride=1, padding=radius)


def _masked_l1(diff: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-sample ``sum |diff| * m / (channels * sum m)``; ``m`` is ``(B, 1, *spatial)``; 0 if ``m`` is empty."""
    num = (diff.abs() * m).flatten(1).sum(dim=1)
    den = m.flatten(1).sum(dim=1) * diff.shape[1]
    return num / den.clamp_min(1.0)


def region_contrastive_loss(
    pred: torch.Tensor,
    pred_perturbed: torch.Tensor,
    mask: torch.Tensor,
    delta: float = MAISI_V2_DELTA,
    dilation: int = 1,
    background_reference: torch.Tensor | None = None,
) -> RegionContrastiveLoss:
    """MAISI-v2 ``L_roi + L_bg`` between outputs under the original and the ROI-removed condition.

    ``pred``/``pred_perturbed``: ``(B, C, *spatial)`` outputs of the same network on the same ``x_t``
    with ``c_orig`` and ``c_perturb``. ``mask``: ROI (1 inside), ``(B, 1, *mask_spatial)`` or
    ``(B, *mask_spatial)``, on the prediction grid or a finer one. ``L_roi`` has zero gradient once
    ``D_roi > delta``. See the module docstring for the readings.
    """
    if pred.shape != pred_perturbed.shape:
        raise ValueError(f"shape mismatch {tuple(pred.shape)} vs {tuple(pred_perturbed.shape)}")
    spatial = pred.shape[2:]
    roi = _as_channel_mask(mask, len(spatial))
    background = 1.0 - dilate_mask(roi, dilation)
    if roi.shape[2:] != spatial:
        roi = F.interpolate(roi, size=spatial, mode="nearest")
        background = F.interpolate(background, size=spatial, mode="nearest")

    d_roi = _masked_l1(pred - pred_perturbed, roi)
    l_roi = -torch.clamp(d_roi, max=delta)
    bg_other = pred if background_reference is None else background_reference
    l_bg = _masked_l1(bg_other - pred_perturbed, background)
    roi_mean, bg_mean = l_roi.mean(), l_bg.mean()
    return RegionContrastiveLoss(roi_mean + bg_mean, roi_mean, bg_mean, d_roi)


def contrastive_lambda(
    step: int, schedule: Sequence[tuple[int, float]] = MAISI_V2_LAMBDA_SCHEDULE
) -> float:
    """Piecewise-constant ``lambda_contrast``: the value of the last ``(start, value)`` with ``start <= step``.

    ``step`` is in the schedule's unit (epochs for the MAISI-v2 default: 0.01 for 0-29, 0.001 from 30).
    """
    entries = sorted(schedule)
    if not entries or step < entries[0][0]:
        raise ValueError(f"step {step} precedes the schedule {entries}")
    value = entries[0][1]
    for start, lam in entries:
        if start <= step:
            value = lam
    return float(value)
