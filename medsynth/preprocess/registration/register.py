"""The registration driver: :func:`register_affine` starts by centre of mass and a shift search, then runs a backend."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .ants_backend import register_ants
from .geometry import center_of_mass_ras, image_data, metric_image, sitk_from_array, translation
from .params import RegistrationParams
from .sitk_backend import register_sitk, set_metric, sitk_metric_value, sitk_threads
from .transform import AffineTransform


def register_affine(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    params: RegistrationParams | None = None,
) -> AffineTransform:
    """Affine registration of ``moving`` to ``fixed``; returns the fixed -> moving transform.

    Multi-resolution (``params.shrink_factors`` / ``smoothing_sigmas`` / ``iterations``),
    initialised by the translation between the intensity centres of mass of the metric copies
    (float32, clipped to ``params.intensity_range``, shifted to start at 0).
    ``transform.apply(moving, fixed)`` then gives the registered image.

    ``metric_value`` of the result is the same measure for both backends: the metric (Mattes MI
    for ``mattes``, negative, lower is better) of the full-resolution metric copies under the
    final transform, computed by SimpleITK on the same seeded sample points. The backend's own
    last value is in ``info["backend_metric"]``.
    """
    params = params or RegistrationParams.from_config()
    fixed_metric = metric_image(image_data(fixed), params.intensity_range)
    moving_metric = metric_image(image_data(moving), params.intensity_range)
    com_fixed = center_of_mass_ras(fixed_metric, fixed.affine)
    com_moving = center_of_mass_ras(moving_metric, moving.affine)
    init = translation(com_moving - com_fixed)  # fixed point -> moving point
    fixed_sitk = sitk_from_array(fixed_metric, fixed.affine)
    moving_sitk = sitk_from_array(moving_metric, moving.affine)
    with sitk_threads(params.num_threads):
        init, search = _search_shift(fixed_sitk, moving_sitk, fixed, moving, init, params)
        if params.backend == "ants":
            tx = register_ants(moving_metric, moving.affine, fixed_metric, fixed.affine, init, com_fixed, params)
        else:
            tx = register_sitk(moving_sitk, fixed_sitk, params, init, com_fixed)
        tx.metric_value = sitk_metric_value(fixed_sitk, moving_sitk, tx.to_sitk(), params)
    tx.info["init_translation_ras"] = init[:3, 3].tolist()
    tx.info["init_search"] = search
    tx.info["params"] = params.to_dict()
    return tx


def _superior_extent(image: nib.Nifti1Image) -> float:
    """Length (mm) of the image's field of view along the superior (world z) axis."""
    corners = np.array([[i, j, k, 1.0] for i in (0, image.shape[0] - 1) for j in (0, image.shape[1] - 1)
                        for k in (0, image.shape[2] - 1)])
    z = (np.asarray(image.affine) @ corners.T)[2]
    return float(z.max() - z.min())


def _search_shift(fixed_sitk: sitk.Image, moving_sitk: sitk.Image, fixed: nib.Nifti1Image, moving: nib.Nifti1Image,
                  init: np.ndarray, params: RegistrationParams) -> tuple[np.ndarray, dict]:
    """Refine a centre-of-mass start by the superior-inferior shift with the best coarse metric.

    When one field of view is shorter than the other (by ``d`` mm), centres of mass do not say
    where along the body the shorter one belongs: shifts in [-d/2, d/2] (step
    ``init_search_step_mm``) are scored with the metric on the first (coarsest, smoothed) level.
    """
    step = params.init_search_step_mm
    half = abs(_superior_extent(fixed) - _superior_extent(moving)) / 2.0
    if step <= 0 or half < step:
        return init, {}
    shrink, sigma = params.shrink_factors[0], params.smoothing_sigmas[0]

    def coarse(img: sitk.Image) -> sitk.Image:
        smooth = sitk.SmoothingRecursiveGaussian(img, [max(sigma, 1e-3) * sp for sp in img.GetSpacing()])
        return sitk.BinShrink(smooth, [shrink] * 3)

    fixed_small, moving_small = coarse(fixed_sitk), coarse(moving_sitk)
    reg = sitk.ImageRegistrationMethod()
    set_metric(reg, params)
    shifts = np.unique(np.concatenate([np.arange(-half, half + 1e-6, step), [0.0]]))
    scores = []
    for dz in shifts:
        candidate = init.copy()
        candidate[2, 3] += dz
        reg.SetInitialTransform(AffineTransform(candidate).to_sitk(), inPlace=False)
        try:
            scores.append(float(reg.MetricEvaluate(fixed_small, moving_small)))
        except RuntimeError:  # too few samples overlap at this shift
            scores.append(np.inf)
    best = int(np.argmin(scores))
    chosen = init.copy()
    chosen[2, 3] += shifts[best]
    return chosen, {"shift_mm": float(shifts[best]), "candidates": len(shifts), "metric": scores[best]}
