"""Rectified-flow path algebra and the velocity-matching loss (ViCTr eq. 1, MedSyn2 eq. 3-4, MAISI-v2).

Convention used everywhere in :mod:`medsynth.objectives`
--------------------------------------------------------
* ``x0`` is the **data** sample (clean image or latent), ``x1`` is the **noise** sample,
  ``x1 ~ N(0, I)``.
* ``x_t = (1 - t) * x0 + t * x1`` with ``t in [0, 1]``: ``t = 0`` is data, ``t = 1`` is noise.
* The velocity is ``dx_t/dt = x1 - x0``; it points from data towards noise, so sampling integrates
  *backwards* in time, from ``t = 1`` to ``t = 0`` (``x_{t'} = x_t + (t' - t) v`` with ``t' < t``).

This is the convention of ViCTr Sec. 3.3 (``Z_t = (1 - t) Z_o + t eps``, eq. 5 target ``eps - Z_o``),
MedSyn2 eq. 3-4 (``z_t = (1 - t) z_0 + t eps``) and of SD3/Flux (diffusers' flow-matching scheduler).
ViCTr Sec. 3.1 and MAISI-v2 write the same equation with the ends named the other way
(``x0 ~ prior``, ``x1 ~ data``); their formulas map onto ours by swapping the names and ``t -> 1 - t``,
which flips the sign of the velocity. MONAI's ``RFlowScheduler`` regresses ``data - noise`` (the
opposite sign); convert with a minus sign when mixing the two.
"""

from __future__ import annotations

from typing import Literal

import torch

TimeLike = torch.Tensor | float

__all__ = [
    "expand_t",
    "interpolate",
    "velocity_target",
    "x0_from_velocity",
    "noise_from_velocity",
    "euler_step",
    "per_sample_mse",
    "rectified_flow_loss",
    "sample_timesteps",
]


def expand_t(t: TimeLike, like: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a tensor that broadcasts against ``like`` (shape ``(B, C, *spatial)``).

    ``t`` may be a Python float, a 0-d tensor, a per-sample vector of shape ``(B,)`` or a tensor that
    already has ``like.ndim`` dimensions. A ``(B,)`` vector is reshaped to ``(B, 1, ..., 1)``.
    """
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0 or t.ndim == like.ndim:
        return t
    if t.ndim == 1 and t.shape[0] == like.shape[0]:
        return t.reshape(-1, *([1] * (like.ndim - 1)))
    raise ValueError(f"t of shape {tuple(t.shape)} does not broadcast per sample against {tuple(like.shape)}")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """Linear path point ``x_t = (1 - t) x0 + t x1`` (ViCTr Sec. 3.1 / MedSyn2 eq. 3); ``t`` per sample."""
    tt = expand_t(t, x0)
    return (1.0 - tt) * x0 + tt * x1


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Conditional velocity ``dx_t/dt = x1 - x0`` (ViCTr eq. 1 / eq. 5 ``eps_true - Z_o``).

    With ``x0`` = data and ``x1`` = noise this points from data to noise.
    """
    return x1 - x0


def x0_from_velocity(v: torch.Tensor, x_t: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """Data estimate implied by a velocity: ``x0_hat = x_t - t v`` (exact when ``v = x1 - x0``)."""
    return x_t - expand_t(t, x_t) * v


def noise_from_velocity(v: torch.Tensor, x_t: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """Noise estimate implied by a velocity: ``x1_hat = x_t + (1 - t) v``."""
    return x_t + (1.0 - expand_t(t, x_t)) * v


def euler_step(x_t: torch.Tensor, v: torch.Tensor, t: TimeLike, t_next: TimeLike) -> torch.Tensor:
    """One Euler step of ``dx/dt = v`` from ``t`` to ``t_next`` (ViCTr eq. 4 with ``dT = t_next - t``).

    Denoising uses ``t_next < t``; ``euler_step(x_t, v, t, 0.0)`` equals :func:`x0_from_velocity`.
    """
    return x_t + (expand_t(t_next, x_t) - expand_t(t, x_t)) * v


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all non-batch dimensions; returns shape ``(B,)``."""
    return (a - b).pow(2).flatten(1).mean(dim=1)


def rectified_flow_loss(
    v_pred: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Velocity-matching loss ``E ||(x1 - x0) - v_theta(x_t, t)||^2`` (ViCTr eq. 1, eq. 5; MAISI-v2 L_flow).

    The squared error is averaged over all elements of each sample (so the value does not depend on
    image size), then over the batch. ``weight`` (shape ``(B,)``) multiplies each sample's error before
    the batch mean, i.e. ``mean_i(w_i * mse_i)`` (SD3-style time weighting; no renormalisation).

    Reading: ViCTr eq. 5 prints ``L_diff = -|phi - (eps - Z_o)|^2``; the leading minus is taken as a
    typo (a negated squared error cannot be minimised), so the loss is the plain squared error.
    """
    err = per_sample_mse(v_pred, velocity_target(x0, x1))
    if weight is not None:
        err = err * torch.as_tensor(weight, dtype=err.dtype, device=err.device).reshape(-1)
    return err.mean()


def sample_timesteps(
    batch: int,
    generator: torch.Generator | None = None,
    distribution: Literal["uniform", "logit_normal"] = "uniform",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    t_min: float = 0.0,
    t_max: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``batch`` training times in ``[t_min, t_max]``.

    * ``"uniform"``: ``t ~ U(0, 1)`` as in ViCTr eq. 1 and MAISI-v2 L_flow.
    * ``"logit_normal"``: ``t = sigmoid(n)``, ``n ~ N(logit_mean, logit_std^2)`` (SD3's default; puts
      more samples at mid-range noise levels).

    The draw on ``[0, 1]`` is then mapped affinely onto ``[t_min, t_max]``. ``generator`` makes draws
    reproducible; draws happen on the CPU and are moved to ``device``.
    """
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
    if distribution == "uniform":
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
    elif distribution == "logit_normal":
        n = torch.randn(batch, generator=generator, dtype=torch.float64) * logit_std + logit_mean
        u = torch.sigmoid(n)
    else:
        raise ValueError(f"unknown timestep distribution {distribution!r}")
    t = t_min + (t_max - t_min) * u
    return t.to(device=device, dtype=dtype)
