"""MedSyn2's x-prediction with a v-loss (MedSyn2 Sec. 3.3, eq. 4; after Li & He 2025, "JiT").

The network outputs a clean-data estimate ``x0_hat = f_theta(x_t, t, c)``; the loss is taken on the
velocity that estimate implies:

    v_theta = (x0_hat - x_t) / (0 - t),      L = || v_theta - (x0 - x_t) / (0 - t) ||^2      (eq. 4)

With ``x_t = (1 - t) x0 + t x1`` the target ``(x0 - x_t) / (0 - t) = x1 - x0`` is the ordinary
rectified-flow velocity (see :mod:`.rectified_flow` for the convention: ``x0`` data, ``x1`` noise), so
the v-loss is the velocity MSE of the implied velocity, and equals ``||x0_hat - x0||^2 / t^2``.

Boundary: the ``1/t`` factor blows up as ``t -> 0`` (the data end). Following JiT's ``t_eps`` we divide
by ``max(t, t_min)`` with ``t_min = T_CLAMP = 0.05`` by default, in both the prediction and the target
(eq. 4 uses the same ``t`` in both), so the loss is ``||x0_hat - x0||^2 / max(t, t_min)^2`` everywhere
and equals the exact v-MSE for ``t >= t_min``. Reading: MedSyn2 does not state a clamp; the value is
JiT's.
"""

from __future__ import annotations

import torch

from .rectified_flow import TimeLike, expand_t, interpolate, per_sample_mse

__all__ = ["T_CLAMP", "velocity_from_x0", "x_prediction_v_loss"]

#: Smallest ``t`` used as the divisor in ``(x_t - x0_hat) / t`` (JiT's ``t_eps``).
T_CLAMP: float = 0.05


def velocity_from_x0(
    x0_hat: torch.Tensor, x_t: torch.Tensor, t: TimeLike, t_min: float = T_CLAMP
) -> torch.Tensor:
    """Velocity implied by an x-prediction: ``v = (x0_hat - x_t) / (0 - t) = (x_t - x0_hat) / max(t, t_min)``.

    MedSyn2 eq. 4 (first part). Inverse of :func:`.rectified_flow.x0_from_velocity` for ``t >= t_min``.
    """
    tt = expand_t(t, x_t).clamp_min(t_min)
    return (x_t - x0_hat) / tt


def x_prediction_v_loss(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: TimeLike,
    t_min: float = T_CLAMP,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """MedSyn2 eq. 4: MSE between the implied velocity of ``x0_hat`` and the true one, on the same path.

    ``x_t`` is rebuilt from ``(x0, x1, t)``. Per-sample mean over elements, optional per-sample
    ``weight`` (shape ``(B,)``), then batch mean -- the same reduction as
    :func:`.rectified_flow.rectified_flow_loss`, which it equals for ``t >= t_min``.
    """
    x_t = interpolate(x0, x1, t)
    v_pred = velocity_from_x0(x0_hat, x_t, t, t_min)
    v_true = velocity_from_x0(x0, x_t, t, t_min)  # == x1 - x0 where t >= t_min
    err = per_sample_mse(v_pred, v_true)
    if weight is not None:
        err = err * torch.as_tensor(weight, dtype=err.dtype, device=err.device).reshape(-1)
    return err.mean()
