"""Downstream segmentation evaluation of synthetic data (ViCTr Table 3, MedSyn2 Table 5, MAISI-v2).

A MONAI segmentation network is trained on 2D slices in four settings (``real``, ``real_aug``,
``real_synth`` per generator variant, ``synth_only``) and tested on real test slices (mDSC, mHD95).

* :mod:`.data` - ``SETTINGS``, ``SegmentationData``, ``compose_setting``, ``augmentation``.
* :mod:`.model` - ``build_segmenter``, ``encoder_features`` (the self-trained MFID extractor),
  ``save_segmenter`` / ``load_segmenter``.
* :mod:`.train` - ``SegmentationStep``, ``train_segmenter``, ``predict_masks``, ``evaluate_segmenter``.
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

__all__ = [
    "DEFAULT_AUGMENTATION",
    "DEFAULT_TRAIN",
    "SEGMENTER_TYPES",
    "TRAIN_KEYS",
    "SETTINGS",
    "SegmentationData",
    "SegmentationStep",
    "apply_augmentation",
    "augmentation",
    "build_segmenter",
    "compose_setting",
    "encoder_features",
    "encoder_module",
    "evaluate_segmenter",
    "load_segmenter",
    "metrics_from_masks",
    "predict_masks",
    "save_segmenter",
    "segmenter_config",
    "setting_augments",
    "train_config",
    "train_segmenter",
    "train_settings",
    "unet_bottom",
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
