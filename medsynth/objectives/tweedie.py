"""Tweedie's formula on the linear rectified-flow path (ViCTr Sec. 3.2).

Convention (see :mod:`.rectified_flow`): ``x0`` data, ``x1 ~ N(0, I)`` noise,
``x_t = (1 - t) x0 + t x1``, velocity ``x1 - x0``, sampling runs from ``t = 1`` to ``t = 0``.

Score from a velocity (derivation)
----------------------------------
Given ``x0``, ``x_t ~ N((1 - t) x0, t^2 I)``, so ``p_t(x) = E_x0[N(x; (1 - t) x0, t^2 I)]`` and

    grad log p_t(x) = E[ -(x - (1 - t) x0) / t^2 | x_t = x ] = -E[x1 | x_t = x] / t,

because ``x - (1 - t) x0 = t x1`` on the path. The velocity minimising ViCTr eq. 1 is
``v*(x, t) = E[x1 - x0 | x_t = x]``; together with ``x = (1 - t) E[x0|x] + t E[x1|x]`` this gives
``E[x1|x] = x + (1 - t) v*`` and ``E[x0|x] = x - t v*``, hence

    grad log p_t(x) = -(x + (1 - t) v*(x, t)) / t.

:func:`score_from_velocity` evaluates this with the model's ``v_theta`` in place of ``v*``.

Tweedie
-------
For ``z = a x0 + sigma x1`` with Gaussian ``x1``, ``E[a x0 | z] = z + sigma^2 grad log p(z)`` (ViCTr
writes ``E[mu_z | z] = z + Sigma_z grad log p(z)``). On the linear path ``a = 1 - t``, ``sigma = t``:

    E[x0 | x_t] = (x_t + t^2 grad log p_t(x_t)) / (1 - t)        (:func:`tweedie_denoise`)

and with the velocity-derived score this is exactly ``x_t - t v``.

abar on a linear path
---------------------
ViCTr weights the score by ``1 - abar_t`` ("cumulative product of variance decay factors"). In a DDPM
``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``, ``1 - abar`` is the noise variance, i.e. the ``Sigma_z``
of Tweedie's formula. Reading: on the linear path the noise variance is ``t^2``, so by default
``1 - abar_t = t^2`` (``abar_t = 1 - t^2``); then ``x_t + (1 - abar_t) grad log p_t = (1 - t) E[x0|x_t]``
is exactly Tweedie's correction. ``mapping="snr"`` instead uses the DDPM ``abar`` with the same
signal-to-noise ratio, ``abar_t = (1 - t)^2 / ((1 - t)^2 + t^2)`` (``x_t / sqrt((1-t)^2 + t^2)`` is a
variance-preserving sample with that ``abar``). Both give ``abar = 1`` at the data end and ``0`` at the
noise end.

Corrected ODE and loss (sign in our time direction)
---------------------------------------------------
ViCTr integrates ``dx = v dt + (1 - abar_t) grad log p(x_t) dt`` from prior to data with ``dt > 0``;
the correction pushes ``x`` up the density. In our time (data at ``t = 0``, ``dt < 0`` when sampling)
the same drift is ``dx/dt = v - (1 - abar_t) grad log p_t``: the field the sampler integrates is the
*corrected velocity* ``u = v_theta - (1 - abar_t) s``. ViCTr's corrected objective
``||(x1 - x0) - v_theta - (1 - abar) grad log p||^2`` becomes ``||(x1 - x0) - u||^2``
(:func:`tweedie_corrected_loss`). Reading: ``grad log p`` is not available in closed form, so by default
it is the model's own estimate :func:`score_from_velocity` (kept in the graph; ``detach_score`` stops
its gradient); a score from elsewhere (e.g. the frozen Stage-1 network) can be passed as ``score``.
Training and sampling use the same ``u``, so the minimiser satisfies ``u = v*`` and sampling with ``u``
follows the true flow; the raw network output is then *not* the velocity.

One-step map
------------
ViCTr's ``T(x0) = x0 + v(x0, 0) + (1 - abar_0) grad log p(x0)`` is one unit Euler step of the corrected
ODE from the prior. In our time it is, from time ``t`` (default ``t = 1``, pure noise):

    T(x) = x - t * (v(x, t) - (1 - abar) s(x, t))                   (:func:`tweedie_one_step`)

With ``abar = 1`` this is the uncorrected map (ViCTr eq. 3), which for ``v = v*`` returns the posterior
mean ``E[x0 | x_t = x]``. With ``abar = abar(1) = 0`` and the velocity-derived score, ``s(x, 1) = -x``
exactly, so the correction is model-independent at the noise end and the map is ``-v(x, 1)``; it lands
on ``E[x0 | x1 = x]`` when ``v`` minimises the corrected loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .rectified_flow import TimeLike, expand_t, interpolate, rectified_flow_loss

__all__ = [
    "SCORE_T_MIN",
    "DENOISE_EPS",
    "score_from_velocity",
    "tweedie_denoise",
    "alpha_bar_from_t",
    "tweedie_corrected_velocity",
    "tweedie_corrected_loss",
    "tweedie_one_step",
]

#: Smallest ``t`` used as the divisor of the score (``t -> 0`` is the data end, where the score of a
#: data distribution without noise is undefined).
SCORE_T_MIN: float = 1e-3
#: Smallest ``1 - t`` used as the divisor in Tweedie's formula (``t -> 1``: pure noise holds no signal).
DENOISE_EPS: float = 1e-3

AbarMapping = Literal["variance", "snr"]
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def score_from_velocity(
    v: torch.Tensor, x_t: torch.Tensor, t: TimeLike, t_min: float = SCORE_T_MIN
) -> torch.Tensor:
    """Score of ``p_t`` implied by a velocity: ``grad log p_t(x_t) = -(x_t + (1 - t) v) / t``.

    Derivation in the module docstring (linear path, Gaussian ``x1``). Exact when ``v`` is the
    optimal velocity ``E[x1 - x0 | x_t]``. The divisor is ``max(t, t_min)``.
    """
    tt = expand_t(t, x_t)
    return -(x_t + (1.0 - tt) * v) / tt.clamp_min(t_min)


def tweedie_denoise(
    x_t: torch.Tensor, t: TimeLike, score: torch.Tensor, eps: float = DENOISE_EPS
) -> torch.Tensor:
    """Tweedie's formula on the linear path: ``E[x0 | x_t] = (x_t + t^2 score) / (1 - t)``.

    ``score`` is ``grad log p_t(x_t)`` (ViCTr Sec. 3.2, ``E[mu|z] = z + Sigma grad log p(z)`` with
    ``mu = (1 - t) x0``, ``Sigma = t^2 I``). The divisor is ``max(1 - t, eps)``.
    """
    tt = expand_t(t, x_t)
    return (x_t + tt.pow(2) * score) / (1.0 - tt).clamp_min(eps)


def alpha_bar_from_t(t: TimeLike, mapping: AbarMapping = "variance") -> torch.Tensor:
    """``abar_t`` for the linear path (see module docstring).

    * ``"variance"`` (default): ``1 - abar = t^2``, the noise variance of ``x_t``, so that
      ``(1 - abar) grad log p`` is exactly Tweedie's ``Sigma grad log p``.
    * ``"snr"``: ``abar = (1 - t)^2 / ((1 - t)^2 + t^2)``, the DDPM ``abar`` with the same SNR.
    """
    tt = t if torch.is_tensor(t) else torch.tensor(float(t))
    if mapping == "variance":
        return 1.0 - tt.pow(2)
    if mapping == "snr":
        signal = (1.0 - tt).pow(2)
        return signal / (signal + tt.pow(2))
    raise ValueError(f"unknown abar mapping {mapping!r}")


def tweedie_corrected_velocity(
    v: torch.Tensor,
    x_t: torch.Tensor,
    t: TimeLike,
    abar: TimeLike | None = None,
    score: torch.Tensor | None = None,
    detach_score: bool = False,
    mapping: AbarMapping = "variance",
) -> torch.Tensor:
    """Field the corrected sampler integrates: ``u = v - (1 - abar_t) grad log p_t(x_t)`` (ViCTr Sec. 3.2).

    ``abar`` defaults to :func:`alpha_bar_from_t` ``(t, mapping)``; ``score`` defaults to
    :func:`score_from_velocity` ``(v, x_t, t)`` (optionally detached). ``abar = 1`` returns ``v``.
    """
    if abar is None:
        abar = alpha_bar_from_t(torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device), mapping)
    if score is None:
        score = score_from_velocity(v, x_t, t)
        if detach_score:
            score = score.detach()
    return v - (1.0 - expand_t(abar, x_t)) * score


def tweedie_corrected_loss(
    v_pred: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: TimeLike,
    x_t: torch.Tensor | None = None,
    abar: TimeLike | None = None,
    score: torch.Tensor | None = None,
    detach_score: bool = False,
    mapping: AbarMapping = "variance",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """ViCTr's Tweedie-corrected objective ``E ||(x1 - x0) - [v_theta - (1 - abar_t) grad log p_t]||^2``.

    ViCTr Sec. 3.2 (second displayed objective), rewritten in this package's time direction (module
    docstring). ``x_t`` defaults to ``interpolate(x0, x1, t)``. The reduction matches
    :func:`.rectified_flow.rectified_flow_loss` (per-sample mean, optional ``weight``, batch mean).
    """
    if x_t is None:
        x_t = interpolate(x0, x1, t)
    u = tweedie_corrected_velocity(v_pred, x_t, t, abar, score, detach_score, mapping)
    return rectified_flow_loss(u, x0, x1, weight)


def tweedie_one_step(
    x: torch.Tensor,
    v_fn: VelocityFn,
    abar: TimeLike | None = None,
    t: float = 1.0,
    score_fn: VelocityFn | None = None,
    mapping: AbarMapping = "variance",
) -> torch.Tensor:
    """ViCTr's corrected one-step map ``T(x) = x - t (v(x, t) - (1 - abar) s(x, t))`` (Sec. 3.2).

    ``v_fn(x, t_vec)`` returns the network velocity at per-sample times ``t_vec`` (shape ``(B,)``);
    ``score_fn(x, t_vec)`` gives ``grad log p_t`` (default: :func:`score_from_velocity` of ``v_fn``).
    ``abar`` defaults to ``alpha_bar_from_t(t, mapping)`` (``0`` at ``t = 1``: full correction);
    ``abar = 1`` gives the uncorrected one-step map ``x - t v`` (ViCTr eq. 3). ``t = 1`` starts from
    pure noise, ViCTr's ``T(x0)``; smaller ``t`` starts from a partially noised input.
    """
    t_vec = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    v = v_fn(x, t_vec)
    if abar is None:
        abar = alpha_bar_from_t(torch.as_tensor(t, dtype=x.dtype, device=x.device), mapping)
    s = score_fn(x, t_vec) if score_fn is not None else None
    u = tweedie_corrected_velocity(v, x, t_vec, abar, s, mapping=mapping)
    return x - float(t) * u
