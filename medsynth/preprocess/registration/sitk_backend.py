"""The SimpleITK backend: thread count, metric setup and value, and the multi-level affine registration."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

from medsynth.io.volume import LPS_TO_RAS

from .params import RegistrationParams
from .transform import AffineTransform


@contextlib.contextmanager
def sitk_threads(num_threads: int | None) -> Iterator[None]:
    """SimpleITK's global default thread count set to ``num_threads`` for the block.

    ``ImageRegistrationMethod.SetNumberOfThreads`` alone does not make SimpleITK registration
    reproducible (the pyramid filters and the optimiser's helpers take the global default).
    """
    if num_threads is None:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(num_threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def set_metric(reg: sitk.ImageRegistrationMethod, params: RegistrationParams) -> None:
    """Set ``params``' metric, its seeded sampling, the interpolator and the thread count on ``reg``."""
    if params.metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=params.histogram_bins)
    elif params.metric == "meansquares":
        reg.SetMetricAsMeanSquares()
    else:
        reg.SetMetricAsCorrelation()
    if params.sampling_fraction < 1.0:
        reg.SetMetricSamplingStrategy(reg.REGULAR)  # regular grid, jittered with the seed
        reg.SetMetricSamplingPercentage(params.sampling_fraction, params.seed)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    if params.num_threads is not None:
        reg.SetNumberOfThreads(int(params.num_threads))


def sitk_metric_value(fixed_img: sitk.Image, moving_img: sitk.Image, tx: sitk.Transform, params) -> float:
    """The metric of the full-resolution metric copies under ``tx`` (seeded samples)."""
    reg = sitk.ImageRegistrationMethod()
    set_metric(reg, params)
    reg.SetInitialTransform(tx, inPlace=False)
    return float(reg.MetricEvaluate(fixed_img, moving_img))


def register_sitk(moving_img: sitk.Image, fixed_img: sitk.Image, params: RegistrationParams, init: np.ndarray,
                  center_ras: np.ndarray) -> AffineTransform:
    """Multi-level affine registration with SimpleITK from the start ``init`` (RAS, fixed -> moving)."""
    # the same start as ANTs gets (centre-of-mass translation, refined by the shift search),
    # rotating about the fixed image's centre of mass
    init_lps = AffineTransform(init).matrix_lps
    tx = sitk.AffineTransform(3)
    tx.SetCenter((LPS_TO_RAS @ np.array([*center_ras, 1.0]))[:3].tolist())
    tx.SetMatrix(init_lps[:3, :3].ravel().tolist())
    tx.SetTranslation(init_lps[:3, 3].tolist())
    min_spacing = min(fixed_img.GetSpacing())
    levels: list[dict[str, Any]] = []
    # One Execute per level (the transform carries over, as inside a multi-level Execute) so that
    # each level gets its own iteration budget and step size; SimpleITK's optimiser takes one
    # iteration count for all levels.
    for shrink, sigma, n_iter in zip(params.shrink_factors, params.smoothing_sigmas, params.iterations):
        if n_iter == 0:
            continue
        reg = sitk.ImageRegistrationMethod()
        set_metric(reg, params)
        step = params.max_step_voxels * shrink * min_spacing
        if params.sitk_optimizer == "regular_step":
            reg.SetOptimizerAsRegularStepGradientDescent(
                learningRate=step,
                minStep=1e-3 * min_spacing,
                numberOfIterations=n_iter,
                relaxationFactor=0.5,
                gradientMagnitudeTolerance=1e-8,
                maximumStepSizeInPhysicalUnits=step,
            )
        else:
            reg.SetOptimizerAsConjugateGradientLineSearch(
                learningRate=1.0,
                numberOfIterations=n_iter,
                convergenceMinimumValue=1e-6,
                convergenceWindowSize=10,
                lineSearchUpperLimit=2.0,
                maximumStepSizeInPhysicalUnits=step,
            )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([shrink])
        reg.SetSmoothingSigmasPerLevel([sigma])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(tx, inPlace=True)
        reg.Execute(fixed_img, moving_img)
        levels.append(
            {
                "shrink": shrink,
                "sigma": sigma,
                "iterations": int(reg.GetOptimizerIteration()),
                "metric": float(reg.GetMetricValue()),
                "stop": reg.GetOptimizerStopConditionDescription(),
            }
        )
    return AffineTransform.from_sitk(
        tx,
        backend="sitk",
        info={"backend_metric": levels[-1]["metric"] if levels else None, "levels": levels},
    )
