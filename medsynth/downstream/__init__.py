"""Downstream segmentation evaluation of synthetic data (ViCTr Table 3, MedSyn2 Table 5, MAISI-v2).

A MONAI segmentation network is trained on 2D slices in four settings (``real``, ``real_aug``,
``real_synth`` per generator variant, ``synth_only``) and tested on real test slices (mDSC, mHD95).

* :mod:`.data` - ``SETTINGS``, ``SegmentationData``, ``compose_setting``, ``augmentation``.
* :mod:`.model` - ``build_segmenter``, ``encoder_features`` (the self-trained MFID extractor),
  ``save_segmenter`` / ``load_segmenter``.
* :mod:`.train` - ``SegmentationStep``, ``train_segmenter``, ``predict_masks``, ``evaluate_segmenter``.
* :mod:`.transfer` - ``task_config`` (a downstream task's keys), ``keep_channels`` (the channels a task
  learns), ``window_to_unit`` (CT slices re-windowed as 8-bit pictures were exported; MedSyn2 Table 5).
* :mod:`.volume_segmenter` - the 3D tumour segmenter of MAISI-v2's downstream study (config
  ``volumes.downstream``): ``build_volume_segmenter``, ``VolumePatchStep``, ``train_volume_segmenter``,
  ``predict_volumes``, ``case_dice``, ``save_volume_segmenter`` / ``load_volume_segmenter``.
"""

from .data import (
    SETTINGS,
    SegmentationData,
    apply_augmentation,
    augmentation,
    compose_setting,
    setting_augments,
)
from .model import (
    SEGMENTER_TYPES,
    build_segmenter,
    encoder_features,
    encoder_module,
    load_segmenter,
    save_segmenter,
    segmenter_config,
    unet_bottom,
)
from .train import (
    TRAIN_KEYS,
    SegmentationStep,
    evaluate_segmenter,
    metrics_from_masks,
    predict_masks,
    train_config,
    train_segmenter,
    train_settings,
)
from .transfer import keep_channels, task_config, window_to_unit
from .volume_segmenter import (
    VolumePatchStep,
    build_volume_segmenter,
    case_dice,
    load_volume_segmenter,
    patch_shape,
    predict_volumes,
    save_volume_segmenter,
    train_volume_segmenter,
    volume_downstream_settings,
)

__all__ = [
    "DEFAULT_AUGMENTATION",
    "DEFAULT_TRAIN",
    "SEGMENTER_TYPES",
    "TRAIN_KEYS",
    "SETTINGS",
    "SegmentationData",
    "SegmentationStep",
    "VolumePatchStep",
    "apply_augmentation",
    "augmentation",
    "build_segmenter",
    "build_volume_segmenter",
    "case_dice",
    "compose_setting",
    "encoder_features",
    "encoder_module",
    "evaluate_segmenter",
    "keep_channels",
    "load_segmenter",
    "load_volume_segmenter",
    "metrics_from_masks",
    "patch_shape",
    "predict_masks",
    "predict_volumes",
    "save_segmenter",
    "save_volume_segmenter",
    "segmenter_config",
    "setting_augments",
    "task_config",
    "train_config",
    "train_segmenter",
    "train_settings",
    "train_volume_segmenter",
    "unet_bottom",
    "volume_downstream_settings",
    "window_to_unit",
]


def __getattr__(name: str):
    """``DEFAULT_TRAIN`` (every training key with its default, :func:`train_settings` of nothing) and
    ``DEFAULT_AUGMENTATION`` (``downstream.augmentation``'s defaults): the schema's values, read from
    config/schema.yaml when first asked for; the schema is their one home."""
    if name == "DEFAULT_TRAIN":
        return train_settings({})
    if name == "DEFAULT_AUGMENTATION":
        from medsynth.settings import section

        return section("downstream")["augmentation"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
