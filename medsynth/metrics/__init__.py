"""Evaluation metrics for synthetic images and masks.

* :mod:`~medsynth.metrics.windows`: HU conversion and CT radiology windows.
* :mod:`~medsynth.metrics.features`: torch-fidelity feature extractors (InceptionV3 from local
  weights only; any encoder trained in the pipeline via :func:`register_module_extractor`).
* :mod:`~medsynth.metrics.frechet`: FD / KID through torch-fidelity, per CT window (MedSyn2 Table 1)
  and per plane on central slices of volumes (MAISI 2.5D FID).
* :mod:`~medsynth.metrics.extractors`, :mod:`~medsynth.metrics.recipes`, :mod:`~medsynth.metrics.pretrained_fd`:
  the pretrained extractors (RadImageNet, Inception, ...), each one's FD recipe as data, their FDs.
* :mod:`~medsynth.metrics.clip_scores`, :mod:`~medsynth.metrics.ct_clip_text`: CLIP scores T2I / I2I and
  CT-CLIP zero-shot classification of the 18 CT-RATE abnormalities (MedSyn2 Tables 2 and 3).
* :mod:`~medsynth.metrics.masks`: Dice / Jaccard / HD95 / ASD and SSIM / PSNR via MONAI (MedSyn2
  Tables 6 and 7).

Names are loaded on first use, so importing :mod:`medsynth.metrics.masks` (as :mod:`medsynth.vae`
does) does not import torch-fidelity.
"""

from __future__ import annotations

from medsynth.lazy import lazy_exports

_EXPORTS = {
    "model_to_hu": "windows", "apply_window": "windows", "windowed": "windows",
    "INCEPTION_EXTRACTOR": "features", "INCEPTION_FEATURE": "features", "INCEPTION_WEIGHTS_FILE": "features",
    "MODULE_FEATURE": "features", "MODULE_REGISTRY": "features", "ModuleFeatureExtractor": "features",
    "inception_weights": "features", "register_module_extractor": "features",
    "unregister_module_extractor": "features",
    "PLANES": "frechet", "PLANE_LABELS": "frechet", "UInt8ImageDataset": "frechet", "central_slices": "frechet",
    "frechet_metrics": "frechet", "inception_fid": "frechet", "per_plane_windowed_fd": "frechet",
    "per_window_fd": "frechet", "to_uint8_rgb": "frechet",
    "FDRecipe": "recipes", "fd_recipe": "recipes", "recipe_unit_images": "recipes", "RecipeEncoder": "recipes",
    "pretrained_fd": "pretrained_fd", "pretrained_fd_volumes": "pretrained_fd", "clip_fd_volumes": "pretrained_fd",
    "clip_fd_slices": "pretrained_fd", "pretrained_windowed_fd": "pretrained_fd",
    "channel_means": "masks", "image_metric_values": "masks", "image_metrics": "masks", "mask_metric_values": "masks",
    "mask_metrics": "masks", "mean_over_channels": "masks",
    "extract_features": "frechet", "frechet_distance": "frechet", "frechet_distance_lowrank": "frechet",
    "CT_RATE_ABNORMALITIES": "clip_scores", "clip_score_i2i": "clip_scores", "clip_score_t2i": "clip_scores",
    "ct_clip_scores": "clip_scores", "zero_shot_classification": "clip_scores",
    "CTClipTextEncoder": "ct_clip_text", "load_ct_clip_text": "ct_clip_text",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
