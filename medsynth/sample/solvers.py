"""Samplers: ODE solvers for rectified-flow velocity fields and DDPM/DDIM for noise-prediction models.

Conventions (see :mod:`medsynth.objectives.rectified_flow`)
------------------------------------------------------------
``x0`` is data, ``x1 ~ N(0, I)`` noise, ``x_t = (1 - t) x0 + t x1``, velocity ``v = x1 - x0``.
Sampling integrates ``dx/dt = v(x, t)`` **backwards**, from ``t = 1`` (noise) to ``t = 0`` (data).

A *field* is a callable ``field(x, t) -> Tensor like x`` with ``x`` of shape ``(B, ...)`` and ``t`` a
per-sample time vector of shape ``(B,)`` (dtype and device of ``x``): the model's velocity at flow
time ``t``. Solvers never change the grad mode; :func:`solve` runs under :func:`torch.no_grad`.

Solvers and their cost in NFE (network function evaluations; one call of the field is one NFE
whatever the batch size, see :class:`CountingField`)
------------------------------------------------------------------------------------------------
============  ==============================================================  ==================
name          update                                                          NFE
============  ==============================================================  ==================
``euler``     ``x <- x + (t' - t) v(x, t)`` on :func:`time_grid`               ``steps``
``heun``      Heun's 2nd order (Euler predictor, trapezoidal corrector) on     ``2 * steps``
              every interval, including the last one (the corrector there
              evaluates the field at ``t = 0``)
``dopri5``    adaptive Dormand-Prince 5(4) from :mod:`torchdiffeq`             adaptive (> 0)
              (``steps`` None); with ``steps``: exactly ``steps`` equal        ``6 * steps + 1``
              Dormand-Prince steps, nothing rejected (:func:`dopri5_fixed`)
``tweedie``   Euler on the Tweedie-corrected field ``u = v - (1 - abar) s``    ``steps``
              (ViCTr Sec. 3.2, :func:`medsynth.objectives.tweedie_corrected_velocity`)
============  ==============================================================  ==================

Classifier-free guidance is part of the field a solver is given
(:class:`medsynth.generator.field.ConditionedField`, both branches in one batched pass: 1 NFE per call).

Noise-prediction (DDPM, "epsilon") models are sampled with diffusers' schedulers by
:func:`diffusion_sample` (``ddpm``: ancestral, stochastic; ``ddim``: deterministic for ``eta = 0``), one
NFE per step; the schedule defaults to :data:`medsynth.objectives.DDPM_SCHEDULER_DEFAULTS`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from medsynth.objectives.noise_prediction import DDPM_SCHEDULER_DEFAULTS
from medsynth.objectives.rectified_flow import euler_step
from medsynth.names import DIFFUSION_SAMPLERS, FLOW_SAMPLERS
from medsynth.objectives.tweedie import AbarMapping, tweedie_corrected_velocity

__all__ = [
    "SOLVERS",
    "DIFFUSION_SCHEDULERS",
    "DOPRI5_MAX_NUM_STEPS",
    "Field",
    "EpsFn",
    "CountingField",
    "SampleResult",
    "time_grid",
    "euler",
    "heun",
    "dopri5",
    "dopri5_fixed",
    "tweedie_sampler",
    "solve",
    "make_scheduler",
    "diffusion_sample",
]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Names accepted by :func:`solve`.
SOLVERS: tuple[str, ...] = FLOW_SAMPLERS
#: Names accepted by :func:`make_scheduler` / :func:`diffusion_sample`.
DIFFUSION_SCHEDULERS: tuple[str, ...] = DIFFUSION_SAMPLERS
#: Default cap on accepted + rejected dopri5 steps (a guard against a stiff or broken field).
DOPRI5_MAX_NUM_STEPS: int = 10_000


class CountingField:
    """Wrap a field and count its evaluations (NFE) in :attr:`nfe`.

    One call adds the wrapped field's ``nfe_per_call`` attribute (default ``1``: one network
    evaluation, whatever the batch size); a field that runs two networks per call sets it to 2.
    """

    def __init__(self, field: Field) -> None:
        self.field = field
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += int(getattr(self.field, "nfe_per_call", 1))
        return self.field(x, t)

    def reset(self) -> None:
        """Set the count back to zero."""
        self.nfe = 0


def time_grid(
    steps: int,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``steps + 1`` decreasing times from ``1`` to ``0`` (both included).

    A uniform grid ``t_i = 1 - i / steps`` is mapped by the SD3 / MAISI-v2 timestep shift
    ``t' = shift t / (1 + (shift - 1) t)``; ``shift = 1`` keeps it uniform, ``shift > 1`` spends more
    steps at high noise. The end points stay at 1 and 0.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    t = torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64)
    if shift != 1.0:
        t = shift * t / (1.0 + (shift - 1.0) * t)
    return t.to(device=device, dtype=dtype)


def _t_vec(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _grid(steps: int, shift: float) -> list[float]:
    return time_grid(steps, shift, dtype=torch.float64).tolist()


def euler(field: Field, x1: torch.Tensor, steps: int, shift: float = 1.0) -> torch.Tensor:
    """Euler from ``t = 1`` to ``t = 0`` on :func:`time_grid` ``(steps, shift)``; ``steps`` NFE.

    The field is never evaluated at ``t = 0``.
    """
    ts = _grid(steps, shift)
    x = x1
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = euler_step(x, field(x, _t_vec(t, x)), t, t_next)
    return x


def heun(field: Field, x1: torch.Tensor, steps: int, shift: float = 1.0) -> torch.Tensor:
    """Heun's method (explicit trapezoidal rule) from ``t = 1`` to ``t = 0``; ``2 * steps`` NFE.

    On each interval ``[t, t']`` of :func:`time_grid`: ``v1 = v(x, t)``, predictor
    ``x~ = x + (t' - t) v1``, ``v2 = v(x~, t')``, corrector ``x <- x + (t' - t) (v1 + v2) / 2``. The last
    interval is treated the same way, so the field is evaluated at ``t = 0`` once.
    """
    ts = _grid(steps, shift)
    x = x1
    for t, t_next in zip(ts[:-1], ts[1:]):
        v1 = field(x, _t_vec(t, x))
        x_pred = euler_step(x, v1, t, t_next)
        v2 = field(x_pred, _t_vec(t_next, x))
        x = euler_step(x, 0.5 * (v1 + v2), t, t_next)
    return x


def dopri5(
    field: Field,
    x1: torch.Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_num_steps: int = DOPRI5_MAX_NUM_STEPS,
) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) (``torchdiffeq.odeint``, ``method="dopri5"``) from ``t = 1`` to ``t = 0``.

    ``rtol`` / ``atol`` are torchdiffeq's per-element tolerances; the NFE is whatever the step-size
    controller needs (about 6 per accepted step plus 2 for the initial step size). ``max_num_steps``
    caps accepted + rejected steps; exceeding it raises :class:`RuntimeError`. The field may be
    evaluated at ``t = 0`` (last stage of the last step).
    """
    from torchdiffeq import odeint

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return field(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))

    t_span = torch.tensor([1.0, 0.0], dtype=torch.float64, device=x1.device)
    try:
        path = odeint(
            func, x1, t_span, rtol=rtol, atol=atol, method="dopri5", options={"max_num_steps": int(max_num_steps)}
        )
    except AssertionError as err:  # torchdiffeq signals an exhausted step budget with an assert
        if "max_num_steps" in str(err):
            raise RuntimeError(f"dopri5 did not reach t = 0 within max_num_steps={max_num_steps}") from err
        raise
    return path[-1]


def dopri5_fixed(field: Field, x1: torch.Tensor, steps: int) -> torch.Tensor:
    """Dormand-Prince 5(4) with exactly ``steps`` equal steps from ``t = 1`` to ``t = 0``; ``6 * steps + 1`` NFE.

    torchdiffeq's ``dopri5`` (same tableau, 5th-order solution propagated, FSAL: 6 new evaluations per
    step plus the one at ``t = 1``) with its controller disarmed: ``step_t`` = the uniform
    :func:`time_grid` ``(steps)``, which cuts every step that would cross the next grid time back onto
    it; ``rtol = 0``, ``atol = inf``, so every error ratio is 0 (no step rejected) and the next step is
    proposed 10x larger, so it is cut back too. The first step is two intervals: torchdiffeq cuts a
    step only when the grid time lies strictly inside it, and a first step of exactly one interval could
    land on the grid time uncut and leave its grid pointer behind. ``max_num_steps = steps`` and a count
    of the evaluations make any other step sequence (or a non-finite field) a :class:`RuntimeError`.
    The result is torchdiffeq's interpolant at ``t = 0``, the end point of the last step up to rounding.
    """
    from torchdiffeq import odeint

    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    steps, calls = int(steps), [0]

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return field(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))

    grid = time_grid(steps, device=x1.device, dtype=torch.float64)
    options = {"step_t": grid, "first_step": 2.0 / steps, "max_num_steps": steps}
    try:
        path = odeint(func, x1, grid[[0, -1]], rtol=0.0, atol=float("inf"), method="dopri5", options=options)
    except AssertionError as err:  # torchdiffeq's step cap and its checks of the state are asserts
        raise RuntimeError(f"dopri5 with {steps} fixed steps failed: {err}") from err
    if calls[0] != 6 * steps + 1:
        raise RuntimeError(f"dopri5 with {steps} fixed steps took {calls[0]} evaluations, not {6 * steps + 1}")
    return path[-1]


def tweedie_sampler(
    field: Field,
    x1: torch.Tensor,
    steps: int,
    mapping: AbarMapping = "variance",
    shift: float = 1.0,
) -> torch.Tensor:
    """Few-step sampler of ViCTr Sec. 3.2: Euler on the Tweedie-corrected field; ``steps`` NFE.

    On each interval ``[t, t']`` of :func:`time_grid` ``(steps, shift)``:
    ``u = tweedie_corrected_velocity(v(x, t), x, t, mapping=mapping)`` (``u = v - (1 - abar_t) s`` with
    the velocity-derived score ``s``) and ``x <- x + (t' - t) u``. With ``steps = 1`` this is exactly
    :func:`medsynth.objectives.tweedie_one_step` from ``t = 1`` (where the ``variance`` mapping gives
    ``abar = 0``, i.e. the full correction). Meant for a model trained with the corrected loss (its
    ``u``, not its raw output, is the velocity).
    """
    ts = _grid(steps, shift)
    x = x1
    for t, t_next in zip(ts[:-1], ts[1:]):
        t_vec = _t_vec(t, x)
        u = tweedie_corrected_velocity(field(x, t_vec), x, t_vec, mapping=mapping)
        x = euler_step(x, u, t, t_next)
    return x


@dataclass
class SampleResult:
    """Output of :func:`solve`: the sample at ``t = 0``, the NFE spent and the wall time in seconds."""

    x0: torch.Tensor
    nfe: int
    seconds: float


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def solve(method: str, field: Field, x1: torch.Tensor, steps: int | None = None, **options: Any) -> SampleResult:
    """Integrate ``field`` from the noise ``x1`` (``t = 1``) to data (``t = 0``) with the solver ``method``.

    ``method`` is one of :data:`SOLVERS`. ``steps`` is required by the fixed-step solvers; ``dopri5`` is
    adaptive with ``steps`` None and takes ``steps`` equal steps otherwise (:func:`dopri5_fixed`).
    ``options`` go to the solver: ``shift`` (euler, heun, tweedie), ``mapping`` (tweedie), ``rtol`` /
    ``atol`` / ``max_num_steps`` (adaptive dopri5; fixed dopri5 takes none). Runs under :func:`torch.no_grad`; the
    wall time is taken with :func:`time.perf_counter` around the solve (after a CUDA synchronise on
    GPU) and the NFE with a :class:`CountingField`.
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown solver {method!r}; valid: {', '.join(SOLVERS)}")
    if method != "dopri5" and steps is None:
        raise ValueError(f"solver {method!r} needs steps")
    counted = CountingField(field)
    _sync(x1)
    start = time.perf_counter()
    with torch.no_grad():
        if method == "euler":
            x0 = euler(counted, x1, steps, **options)
        elif method == "heun":
            x0 = heun(counted, x1, steps, **options)
        elif method == "dopri5" and steps is None:
            x0 = dopri5(counted, x1, **options)
        elif method == "dopri5":
            x0 = dopri5_fixed(counted, x1, steps, **options)
        else:
            x0 = tweedie_sampler(counted, x1, steps, **options)
    _sync(x0)
    return SampleResult(x0=x0, nfe=counted.nfe, seconds=time.perf_counter() - start)


def make_scheduler(kind: str = "ddim", **cfg: Any) -> Any:
    """Build a diffusers ``DDPMScheduler`` (``kind="ddpm"``) or ``DDIMScheduler`` (``kind="ddim"``).

    ``cfg`` overrides :data:`medsynth.objectives.DDPM_SCHEDULER_DEFAULTS` (MAISI's schedule) and is
    passed to the scheduler's constructor (``num_train_timesteps``, ``beta_schedule``, ``beta_start``,
    ``beta_end``, ``timestep_spacing``, ...). Settings the chosen class does not take are an error.
    """
    import diffusers

    classes = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}
    if kind not in classes:
        raise ValueError(f"unknown diffusion scheduler {kind!r}; valid: {', '.join(DIFFUSION_SCHEDULERS)}")
    return classes[kind](**{**DDPM_SCHEDULER_DEFAULTS, **cfg})


def diffusion_sample(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    scheduler: str | Any = "ddim",
    steps: int = 50,
    *,
    num_train_timesteps: int = DDPM_SCHEDULER_DEFAULTS["num_train_timesteps"],
    beta_schedule: str = DDPM_SCHEDULER_DEFAULTS["beta_schedule"],
    beta_start: float = DDPM_SCHEDULER_DEFAULTS["beta_start"],
    beta_end: float = DDPM_SCHEDULER_DEFAULTS["beta_end"],
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    **scheduler_cfg: Any,
) -> torch.Tensor:
    """Sample a noise-prediction model with diffusers' DDPM or DDIM scheduler; ``steps`` NFE.

    ``eps_fn(x, timesteps)`` returns the predicted noise for integer ``timesteps`` of shape ``(B,)``
    (``int64``; timestep 0 is clean, see :mod:`medsynth.objectives.noise_prediction`). ``x_T`` is the
    start noise (``N(0, I)``; the schedulers' ``init_noise_sigma`` is 1). ``scheduler`` is ``"ddpm"``
    (ancestral sampling, random noise from ``generator`` at every step), ``"ddim"`` (``eta = 0``:
    deterministic; ``eta = 1``: DDPM-like noise) or an already built diffusers scheduler, in which case
    the schedule arguments are ignored. ``scheduler.set_timesteps(steps)`` picks the timesteps.
    Runs with the caller's grad mode (wrap in :func:`torch.no_grad` for inference).
    """
    if isinstance(scheduler, str):
        sched = make_scheduler(
            scheduler,
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            **scheduler_cfg,
        )
        kind = scheduler
    else:
        sched = scheduler
        kind = "ddim" if "eta" in _step_params(sched) else "ddpm"
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if kind == "ddpm" and eta != 0.0:
        raise ValueError("eta applies to DDIM only; DDPM sampling is always fully stochastic")
    sched.set_timesteps(int(steps), device=x_T.device)
    x = x_T * sched.init_noise_sigma
    for k in sched.timesteps:
        k_vec = torch.full((x.shape[0],), int(k), dtype=torch.int64, device=x.device)
        eps = eps_fn(sched.scale_model_input(x, k), k_vec)
        if kind == "ddim":
            x = sched.step(eps, k, x, eta=eta, generator=generator).prev_sample
        else:
            x = sched.step(eps, k, x, generator=generator).prev_sample
    return x


def _step_params(sched: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(sched.step).parameters)
