"""Downstream segmentation evaluation of synthetic data (ViCTr Table 3, MedSyn2 Table 5, MAISI-v2).

A MONAI segmentation network is trained on 2D slices in four settings (``real``, ``real_aug``,
``real_synth`` per generator variant, ``synth_only``) and tested on real test slices (mDSC, mHD95).

* :mod:`.data` - ``SETTINGS``, ``SegmentationData``, ``compose_setting``, ``augmentation``.
* :mod:`.model` - ``build_segmenter``, ``encoder_features`` (the self-trained MFID extractor),
  ``save_segmenter`` / ``load_segmenter``.
* :mod:`.train` - ``SegmentationStep``, ``train_segmenter``, ``predict_masks``, ``evaluate_segmenter``.
"""

from .data import (
    DEFAULT_AUGMENTATION,
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
    unet_bottom,
)
from .train import (
    DEFAULT_TRAIN,
    SegmentationStep,
    evaluate_segmenter,
    metrics_from_masks,
    predict_masks,
    train_config,
    train_segmenter,
)

__all__ = [
    "DEFAULT_AUGMENTATION",
    "DEFAULT_TRAIN",
    "SEGMENTER_TYPES",
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
    "setting_augments",
    "train_config",
    "train_segmenter",
    "unet_bottom",
]
