"""Noise-prediction (DDPM, "epsilon") objective: the diffusion baseline of MAISI-v2.

Convention (differs from the rest of :mod:`medsynth.objectives`)
----------------------------------------------------------------
A discrete DDPM with ``num_train_timesteps`` (``T``) integer timesteps ``0 .. T - 1`` and cumulative
signal fractions ``abar_k`` (the diffusers scheduler's ``alphas_cumprod``):

    x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps,    eps ~ N(0, I),

so **timestep 0 is (nearly) clean data** and ``T - 1`` is (nearly) pure noise: the same direction as the
flow time of :mod:`.rectified_flow` (``t = 0`` data, ``t = 1`` noise), but a variance-preserving path
rather than the linear one. The network regresses the noise ``eps`` (:func:`noise_prediction_loss`);
:func:`medsynth.sample.diffusion_sample` turns such a network into DDPM / DDIM samplers.

Time fed to the generator
-------------------------
The generator's ``predict(...)`` takes a flow-style time ``t`` in ``[0, 1]``; for the noise-prediction
objective it is given ``t = timestep / num_train_timesteps`` (:func:`ddpm_model_time`). Backbones that
embed ``t * 1000`` (diffusers UNet / PixArt, see :func:`medsynth.models.backbones.predict`) therefore
see exactly the DDPM integer timestep when ``num_train_timesteps`` is 1000, the scale their sinusoidal
embeddings were designed for.

Schedule
--------
:data:`DDPM_SCHEDULER_DEFAULTS` is MAISI's DDPM schedule (1000 steps, ``scaled_linear`` betas from
``0.0015`` to ``0.0195``, no ``x0`` clipping since latents are not confined to ``[-1, 1]``). Training
and sampling should build their scheduler from the same settings
(:func:`medsynth.sample.make_scheduler`).
"""

from __future__ import annotations

from typing import Any

import torch

from .rectified_flow import per_sample_mse

__all__ = [
    "DDPM_SCHEDULER_DEFAULTS",
    "ddpm_add_noise",
    "ddpm_model_time",
    "noise_prediction_loss",
    "sample_ddpm_timesteps",
]

#: MAISI's DDPM noise schedule in diffusers' terms (MONAI ``scaled_linear_beta`` == diffusers
#: ``scaled_linear``). ``timestep_spacing="trailing"`` makes inference start at timestep ``T - 1``
#: (pure noise, matching an ``x_T ~ N(0, I)`` start), as recommended by Lin et al. 2024 for few steps.
DDPM_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
}


def ddpm_add_noise(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler: Any) -> torch.Tensor:
    """Forward process ``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) noise`` at integer ``timesteps`` (``(B,)``).

    ``scheduler`` is a diffusers DDPM/DDIM scheduler; its ``add_noise`` does the work (and moves its
    ``alphas_cumprod`` to ``x0``'s device and dtype).
    """
    timesteps = torch.as_tensor(timesteps, device=x0.device).long().reshape(-1)
    if timesteps.shape[0] != x0.shape[0]:
        raise ValueError(f"need one timestep per sample: got {timesteps.shape[0]} for batch {x0.shape[0]}")
    return scheduler.add_noise(x0, noise, timesteps)


def noise_prediction_loss(
    eps_pred: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Noise-matching loss ``E ||eps - eps_theta(x_k, k)||^2`` (DDPM, Ho et al. 2020, "simple" loss).

    Same reduction as :func:`.rectified_flow.rectified_flow_loss`: squared error averaged over all
    elements of each sample, optionally multiplied by a per-sample ``weight`` (shape ``(B,)``), then
    averaged over the batch.
    """
    err = per_sample_mse(eps_pred, noise)
    if weight is not None:
        err = err * torch.as_tensor(weight, dtype=err.dtype, device=err.device).reshape(-1)
    return err.mean()


def sample_ddpm_timesteps(
    batch: int,
    generator: torch.Generator | None = None,
    num_train_timesteps: int = 1000,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``batch`` integer training timesteps uniformly from ``{0, ..., num_train_timesteps - 1}``.

    Drawn on the CPU with ``generator`` (reproducible) and moved to ``device``; dtype ``int64``.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    k = torch.randint(0, num_train_timesteps, (batch,), generator=generator, dtype=torch.int64)
    return k.to(device=device)


def ddpm_model_time(
    timesteps: torch.Tensor, num_train_timesteps: int = 1000, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Flow-style time handed to the generator for integer DDPM ``timesteps``: ``timestep / T``.

    See the module docstring: backbones embedding ``t * 1000`` then see the integer timestep when
    ``T = 1000``.
    """
    return torch.as_tensor(timesteps).to(dtype) / float(num_train_timesteps)
