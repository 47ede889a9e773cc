"""Training objectives for the reproduced methods (ViCTr, MedSyn2, MAISI-v2).

Convention throughout: ``x0`` is data, ``x1 ~ N(0, I)`` is noise, ``x_t = (1 - t) x0 + t x1``,
velocity ``x1 - x0`` (see :mod:`.rectified_flow`).
"""

from .composite import DEFAULT_COMPOSITE_WEIGHTS, CompositeLoss, composite_loss, ssim_loss
from .dmd import distribution_matching_loss, one_step_sample, regression_loss
from .consistency import spatial_consistency_loss, spatial_gradients, temporal_consistency_loss
from .contrastive import (
    MAISI_V2_DELTA,
    MAISI_V2_LAMBDA_SCHEDULE,
    RegionContrastiveLoss,
    contrastive_lambda,
    dilate_mask,
    region_contrastive_loss,
)
from .rectified_flow import (
    euler_step,
    expand_t,
    interpolate,
    noise_from_velocity,
    rectified_flow_loss,
    sample_timesteps,
    velocity_target,
    x0_from_velocity,
)
from .tweedie import (
    alpha_bar_from_t,
    score_from_velocity,
    tweedie_corrected_loss,
    tweedie_corrected_velocity,
    tweedie_denoise,
    tweedie_one_step,
)
from .x_prediction import T_CLAMP, velocity_from_x0, x_prediction_v_loss
from .noise_prediction import (
    DDPM_SCHEDULER_DEFAULTS,
    ddpm_add_noise,
    ddpm_model_time,
    noise_prediction_loss,
    sample_ddpm_timesteps,
)

__all__ = [
    "DEFAULT_COMPOSITE_WEIGHTS",
    "MAISI_V2_DELTA",
    "MAISI_V2_LAMBDA_SCHEDULE",
    "T_CLAMP",
    "CompositeLoss",
    "RegionContrastiveLoss",
    "alpha_bar_from_t",
    "composite_loss",
    "contrastive_lambda",
    "dilate_mask",
    "distribution_matching_loss",
    "one_step_sample",
    "regression_loss",
    "euler_step",
    "expand_t",
    "interpolate",
    "noise_from_velocity",
    "rectified_flow_loss",
    "region_contrastive_loss",
    "sample_timesteps",
    "score_from_velocity",
    "spatial_consistency_loss",
    "spatial_gradients",
    "ssim_loss",
    "temporal_consistency_loss",
    "tweedie_corrected_loss",
    "tweedie_corrected_velocity",
    "tweedie_denoise",
    "tweedie_one_step",
    "velocity_from_x0",
    "velocity_target",
    "x0_from_velocity",
    "x_prediction_v_loss",
    "DDPM_SCHEDULER_DEFAULTS",
    "ddpm_add_noise",
    "ddpm_model_time",
    "noise_prediction_loss",
    "sample_ddpm_timesteps",
]
