"""ViCTr Stage-2 consistency losses between the frozen base and the LoRA-adapted network (Sec. 3.3).

ViCTr runs both ``phi_base`` (frozen) and ``phi_adapt`` (LoRA) on the same ``[Z_t, Z_s]`` and text
embedding and adds: a consistency loss that "aligns intermediate outputs of phi_base and phi_adapt"; a
temporal consistency loss that "preserves smooth transitions across time steps in the reverse
diffusion"; and a spatial consistency loss that "ensures alignment in the output reconstructions
(Z_{t-1}^base, Z_{t-1}^adapt)". No formulas are given.

Readings:
* temporal: the adapted velocity agrees with the base velocity at the same ``(x_t, t)``; when
  predictions at ``K`` consecutive timesteps of one reverse trajectory are stacked along ``time_dim``,
  the step-to-step changes ``v_{k+1} - v_k`` must also agree (the adapted trajectory bends where the
  base one does). Both terms are MSEs.
* spatial: MSE between the two one-step reconstructions ``Z_{t-1} = Z_t + (t_prev - t) v`` (ViCTr
  eq. 4; build them with :func:`.rectified_flow.euler_step`) plus an MSE between their forward
  finite-difference spatial gradients, so the reconstructions share edges/structure, not just values.
The base outputs are treated as fixed targets (detached). Both losses are 0 iff the inputs agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["spatial_gradients", "temporal_consistency_loss", "spatial_consistency_loss"]


def spatial_gradients(x: torch.Tensor) -> list[torch.Tensor]:
    """Forward differences ``x[..., i+1, ...] - x[..., i, ...]`` along each spatial dim (dims 2..)."""
    return [torch.diff(x, dim=d) for d in range(2, x.ndim) if x.shape[d] > 1]


def temporal_consistency_loss(
    v_adapted: torch.Tensor,
    v_base: torch.Tensor,
    time_dim: int | None = None,
    transition_weight: float = 1.0,
) -> torch.Tensor:
    """Agreement of the adapted and frozen-base predictions along the reverse trajectory (reading above).

    ``MSE(v_adapted, v_base)``; if ``time_dim`` is given and holds ``K >= 2`` consecutive timesteps,
    plus ``transition_weight * MSE(diff_t v_adapted, diff_t v_base)``.
    """
    if v_adapted.shape != v_base.shape:
        raise ValueError(f"shape mismatch {tuple(v_adapted.shape)} vs {tuple(v_base.shape)}")
    v_base = v_base.detach()
    loss = F.mse_loss(v_adapted, v_base)
    if time_dim is not None and v_adapted.shape[time_dim] > 1 and transition_weight:
        loss = loss + transition_weight * F.mse_loss(
            torch.diff(v_adapted, dim=time_dim), torch.diff(v_base, dim=time_dim)
        )
    return loss


def spatial_consistency_loss(
    z_adapted: torch.Tensor,
    z_base: torch.Tensor,
    grad_weight: float = 1.0,
) -> torch.Tensor:
    """Alignment of the reconstructions ``Z_{t-1}^adapt`` and ``Z_{t-1}^base`` (reading above).

    ``MSE(z_adapted, z_base) + grad_weight * mean_d MSE(D_d z_adapted, D_d z_base)`` with ``D_d`` the
    forward difference along spatial dim ``d``; works for ``(B, C, H, W)`` and ``(B, C, D, H, W)``.
    """
    if z_adapted.shape != z_base.shape:
        raise ValueError(f"shape mismatch {tuple(z_adapted.shape)} vs {tuple(z_base.shape)}")
    z_base = z_base.detach()
    loss = F.mse_loss(z_adapted, z_base)
    if grad_weight:
        pairs = list(zip(spatial_gradients(z_adapted), spatial_gradients(z_base)))
        if pairs:
            grad_term = torch.stack([F.mse_loss(ga, gb) for ga, gb in pairs]).mean()
            loss = loss + grad_weight * grad_term
    return loss
