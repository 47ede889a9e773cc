"""ViCTr's composite training loss ``L_diff + L_2 + L_SSIM`` (ViCTr Sec. 3.3, "Composite Loss").

* ``L_diff``: velocity MSE on the (latent) path, ViCTr eq. 5 (:func:`.rectified_flow.rectified_flow_loss`).
* ``L_2``: pixel MSE between the generated image ``X_ig`` and the ground truth ``X_I``.
* ``L_SSIM``: ``1 - SSIM(X_ig, X_I)`` via MONAI's :class:`monai.losses.SSIMLoss` (2D or 3D).

Reading: ViCTr obtains ``X_ig`` by "refining Z_{t-1} via Tweedie's formula" and decoding the denoised
latent with the frozen VAE decoder. Here ``X_ig = decode(x0_hat)`` with ``x0_hat = x_t - t v_pred``, the
Tweedie posterior-mean estimate of the clean sample (identical to :func:`.tweedie.tweedie_denoise` with
:func:`.tweedie.score_from_velocity`). ``decode`` defaults to the identity (pixel-space model); the
ground-truth image defaults to ``decode(x0)``. The paper gives no term weights; the default is the
plain sum written in the paper (all weights 1). If the model is trained with the Tweedie correction,
pass the corrected velocity (:func:`.tweedie.tweedie_corrected_velocity`) as ``v_pred``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .rectified_flow import TimeLike, interpolate, rectified_flow_loss, x0_from_velocity

__all__ = ["DEFAULT_COMPOSITE_WEIGHTS", "CompositeLoss", "ssim_loss", "composite_loss"]

DEFAULT_COMPOSITE_WEIGHTS: dict[str, float] = {"diff": 1.0, "l2": 1.0, "ssim": 1.0}


class CompositeLoss(NamedTuple):
    """Weighted total and its unweighted parts."""

    total: torch.Tensor
    diff: torch.Tensor
    l2: torch.Tensor
    ssim: torch.Tensor


def ssim_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 2.0,
    win_size: int = 11,
) -> torch.Tensor:
    """``1 - SSIM`` from MONAI's ``SSIMLoss`` for ``(B, C, H, W)`` or ``(B, C, D, H, W)`` tensors.

    ``data_range`` defaults to 2 for images in ``[-1, 1]``. MONAI filters without padding, so the
    Gaussian window is shrunk to the largest odd size that fits the smallest spatial dimension.
    MONAI computes SSIM in float32. MONAI is imported on first use (importing it costs seconds).
    """
    from monai.losses import SSIMLoss  # noqa: PLC0415 - deliberately lazy

    spatial_dims = pred.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"SSIM needs (B, C, H, W) or (B, C, D, H, W), got {tuple(pred.shape)}")
    win = min(win_size, *pred.shape[2:])
    if win % 2 == 0:
        win -= 1
    if win < 1:
        raise ValueError(f"spatial size {tuple(pred.shape[2:])} too small for SSIM")
    loss = SSIMLoss(spatial_dims=spatial_dims, data_range=data_range, win_size=win)
    return loss(pred, target)


def composite_loss(
    v_pred: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: TimeLike,
    x_t: torch.Tensor | None = None,
    weights: Mapping[str, float] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    target_image: torch.Tensor | None = None,
    data_range: float = 2.0,
    win_size: int = 11,
) -> CompositeLoss:
    """ViCTr Stage-1/2 loss ``w_diff L_diff + w_l2 L_2 + w_ssim L_SSIM`` (module docstring).

    ``v_pred`` is the velocity at ``x_t`` (default ``interpolate(x0, x1, t)``); ``weights`` may give
    any subset of ``diff``/``l2``/``ssim`` (missing keys take :data:`DEFAULT_COMPOSITE_WEIGHTS`).
    Returns :class:`CompositeLoss` ``(total, diff, l2, ssim)``.
    """
    w = dict(DEFAULT_COMPOSITE_WEIGHTS)
    if weights is not None:
        unknown = set(weights) - set(w)
        if unknown:
            raise ValueError(f"unknown composite weight keys {sorted(unknown)}")
        w.update(weights)
    if x_t is None:
        x_t = interpolate(x0, x1, t)
    decode_fn = decode if decode is not None else (lambda z: z)

    l_diff = rectified_flow_loss(v_pred, x0, x1)
    image_hat = decode_fn(x0_from_velocity(v_pred, x_t, t))
    image = target_image if target_image is not None else decode_fn(x0)
    l_2 = F.mse_loss(image_hat, image)
    l_ssim = ssim_loss(image_hat, image, data_range=data_range, win_size=win_size)
    total = w["diff"] * l_diff + w["l2"] * l_2 + w["ssim"] * l_ssim
    return CompositeLoss(total, l_diff, l_2, l_ssim)
