"""SDEdit on a rectified flow: re-noise given latents to ``t = strength``, integrate back to ``t = 0``.

Used by ViCTr's counterfactual synthesis (Fig. 3 / Fig. 8: cirrhotic images of graded severity made
from non-cirrhotic scans) and MedSyn2's progressive multi-condition synthesis (Fig. 5: "fix the same
random seed and add noise again to apply additional pairs of conditions following SDEdit [22]").

Conventions of :mod:`medsynth.sample.solvers`: ``x_t = t * noise + (1 - t) * x0``, sampling integrates
``t`` from 1 (noise) to 0 (data). The edit starts at ``x_s = s * noise + (1 - s) * x0`` (``s`` the
strength) and takes the Euler steps of :func:`~medsynth.sample.solvers.time_grid` ``(steps, shift)``
that lie below ``s`` (the first one from ``s`` itself), as diffusers' img2img truncates its schedule:
``strength = 1`` is plain Euler sampling from ``noise`` (same grid, same arithmetic), ``strength = 0``
returns ``x0`` unchanged (no field evaluation).
"""

from __future__ import annotations

import torch

from medsynth.objectives.rectified_flow import euler_step
from medsynth.sample.solvers import Field, time_grid

__all__ = ["edit_times", "renoise", "sdedit_euler"]


def _check_strength(strength: float) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"edit strength must lie in [0, 1], got {strength!r}")
    return s


def edit_times(steps: int, shift: float, strength: float) -> list[float]:
    """The decreasing times of an edit: ``strength`` then the points of ``time_grid(steps, shift)`` below
    it, down to 0 (``[0.0]`` alone for strength 0: no step). ``len - 1`` is the NFE."""
    s = _check_strength(strength)
    grid = time_grid(steps, shift, dtype=torch.float64).tolist()
    if s == 0.0:
        return [0.0]
    return [s] + [t for t in grid if t < s]


def renoise(x0: torch.Tensor, noise: torch.Tensor, strength: float) -> torch.Tensor:
    """``x_s = s * noise + (1 - s) * x0``: the forward (interpolation) path of rectified flow at ``t = s``."""
    s = _check_strength(strength)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(x0.shape)}")
    if s == 1.0:
        return noise.clone()
    return s * noise + (1.0 - s) * x0


def sdedit_euler(field: Field, x0: torch.Tensor, noise: torch.Tensor, strength: float, steps: int,
                 shift: float = 1.0) -> tuple[torch.Tensor, int]:
    """SDEdit (module docstring): ``(edited x0, nfe)``. ``field(x, t_vec)`` is the (guided) velocity of the
    new condition; ``noise`` the seeded ``N(0, I)`` draw of the same shape as ``x0``."""
    ts = edit_times(steps, shift, strength)
    if len(ts) == 1:
        return x0.clone(), 0
    x = renoise(x0, noise.to(device=x0.device, dtype=x0.dtype), ts[0])
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = euler_step(x, field(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)), t, t_next)
    return x, len(ts) - 1
