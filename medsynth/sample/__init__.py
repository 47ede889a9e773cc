"""Sampling: ODE solvers for rectified-flow fields and DDPM/DDIM for noise-prediction models.

See :mod:`.solvers` for the conventions and the NFE of each solver.
"""

from .solvers import (
    DIFFUSION_SCHEDULERS,
    DOPRI5_MAX_NUM_STEPS,
    SOLVERS,
    CountingField,
    EpsFn,
    Field,
    SampleResult,
    diffusion_sample,
    dopri5,
    dopri5_fixed,
    euler,
    heun,
    make_scheduler,
    solve,
    time_grid,
    tweedie_sampler,
)

__all__ = [
    "DIFFUSION_SCHEDULERS",
    "DOPRI5_MAX_NUM_STEPS",
    "SOLVERS",
    "CountingField",
    "EpsFn",
    "Field",
    "SampleResult",
    "diffusion_sample",
    "dopri5",
    "dopri5_fixed",
    "euler",
    "heun",
    "make_scheduler",
    "solve",
    "time_grid",
    "tweedie_sampler",
]
