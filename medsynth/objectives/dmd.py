"""Distribution matching distillation (DMD, Yin et al. 2024), written for rectified-flow models.

A one-step generator ``G`` maps noise ``z`` to data, ``x_g = z - v_G(z, 1)`` (one Euler step from
``t = 1`` to ``0``; :func:`one_step_sample`). DMD moves ``x_g`` along the difference of two scores
evaluated at a noised copy ``x_t = (1 - t) x_g + t eps``: the *real* score of the frozen teacher and
the *fake* score of a model trained online on the generator's own samples. For a flow model the score
difference is proportional to the difference of the implied data estimates
``x0_hat = x_t - t v`` (:func:`medsynth.objectives.x0_from_velocity`), so the generator's gradient is

    grad = (x0_fake - x0_real) / w,   w = mean |x_g - x0_real|  (per sample, DMD eq. 8's weighting),

applied through the surrogate ``0.5 * mean((x_g - sg(x_g - grad))^2)`` whose gradient with respect to
``x_g`` is ``grad / numel`` (:func:`distribution_matching_loss`). DMD's regression term pairs each noise
with the teacher's multi-step sample from it (:func:`regression_loss`; DMD uses LPIPS on images, here
the latent MSE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rectified_flow import expand_t

__all__ = ["distribution_matching_loss", "regression_loss", "one_step_sample"]


def one_step_sample(v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``x_g = z - v``: the Euler step from ``t = 1`` (noise ``z``) to ``t = 0`` with velocity ``v = v(z, 1)``."""
    return z - expand_t(1.0, z) * v


def distribution_matching_loss(x_gen: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor,
                               eps: float = 1e-6) -> torch.Tensor:
    """DMD surrogate loss; its gradient w.r.t. ``x_gen`` is ``(x0_fake - x0_real) / w / x_gen.numel()``.

    ``x0_real`` / ``x0_fake``: data estimates of the teacher and the fake-score model at the same noised
    copy of ``x_gen`` (no gradient flows into them). ``w``: per-sample mean absolute distance between
    ``x_gen`` and ``x0_real`` (clamped at ``eps``), which makes the step size scale-free.
    """
    if not (x_gen.shape == x0_real.shape == x0_fake.shape):
        raise ValueError(f"shapes differ: {tuple(x_gen.shape)}, {tuple(x0_real.shape)}, {tuple(x0_fake.shape)}")
    with torch.no_grad():
        w = (x_gen - x0_real).abs().flatten(1).mean(1).clamp_min(eps)
        grad = (x0_fake - x0_real) / w.view(-1, *[1] * (x_gen.ndim - 1))
        target = x_gen - grad
    return 0.5 * F.mse_loss(x_gen, target)


def regression_loss(x_gen: torch.Tensor, x_teacher: torch.Tensor) -> torch.Tensor:
    """DMD's paired regression term: MSE between ``G(z)`` and the teacher's sample from the same ``z``."""
    return F.mse_loss(x_gen, x_teacher)
