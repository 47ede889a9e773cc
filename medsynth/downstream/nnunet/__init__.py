"""nnU-Net v2 as a downstream segmenter (``downstream.model: {type: nnunetv2, params: {...}}``).

nnU-Net plans, preprocesses and trains itself; this package adapts it to the downstream contract of
:mod:`medsynth.downstream` (2D slices ``(N, 1, H, W)`` in [-1, 1], multi-label binary masks ``(N, C, H, W)``).

Export (:func:`export_dataset`)
-------------------------------
The training slices become an nnU-Net raw dataset ``nnUNet_raw/Dataset{id:03d}_{name}`` with
``imagesTr/case_{i:05d}_0000.nii.gz``, ``labelsTr/case_{i:05d}.nii.gz`` and ``dataset.json``. Each case is a
2D NIfTI written with SimpleITK (array ``(H, W)``, spacing 1 x 1); nnU-Net's ``SimpleITKIO`` reads 2D
images as ``(1, H, W)`` with a dummy out-of-plane spacing (its documented way of feeding 2D data).

* Intensities: the image is written as ``x + INTENSITY_OFFSET`` (``x`` in [-1, 1] -> [1, 3]) so no pixel is
  exactly zero: nnU-Net's crop-to-nonzero then never crops and its ``use_mask_for_norm`` stays off. The
  channel is named ``"zscore"`` (``ZScoreNormalization``: per image ``(v - mean) / max(std, 1e-8)``, population
  std) - not ``"CT"`` (dataset-wide clipping + statistics). A z-score is shift invariant, so the offset
  cancels and :class:`NnUNetSegmenter` reproduces the normalisation exactly from ``x``.
* Labels: the C binary channels become one integer label map, ``c + 1`` for channel ``c`` (0 = background).
  Where channels overlap the **later channel wins** (nnU-Net's softmax output is mutually exclusive).
  Label names are ``class{c}`` unless ``names`` are given.

Training (:func:`train_nnunet_segmenter`)
-----------------------------------------
Runs nnU-Net's ``nnUNetv2_plan_and_preprocess --no_pp``, ``nnUNetv2_preprocess`` and ``nnUNetv2_train``
entry points in subprocesses (nnU-Net
reads ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` at import time) with those folders under
the run's checkpoints folder (``outputs.checkpoints``, a work folder kept between attempts); every
command's output is appended to ``<checkpoints>/logs/<step>.log``. A failing
command raises :class:`NnUNetCommandError` naming the command and the last lines of its output.
``params`` (defaults: the schema's, :func:`default_nnunet_params`, also :data:`DEFAULT_NNUNET_PARAMS`):

* ``configuration`` ("2d"), ``fold`` ("all": train on every case, nnU-Net's pseudo-validation on the same
  cases), ``plans`` ("nnUNetPlans", the plans identifier), ``planner`` ("ExperimentPlanner"; must produce
  ``plans``, e.g. ``nnUNetPlannerResEncM`` -> ``nnUNetResEncUNetMPlans``);
* ``trainer`` ("nnUNetTrainer", used when the setting augments) and ``trainer_no_augmentation``
  ("nnUNetTrainerNoDA", used when ``augment=False``) - any trainer class nnU-Net can find by name, e.g.
  ``nnUNetTrainer_1epoch`` / ``nnUNetTrainer_5epochs`` for smoke tests;
* ``device`` ("cpu"; "cuda" for the paper studies), ``num_processes`` (1: preprocessing workers and
  ``nnUNet_n_proc_DA``, 0 = augmentation in the main process), ``dataset_id`` (901), ``dataset_name``
  ("medsynth"), ``plans_overrides`` ({}: merged recursively into ``plans["configurations"][configuration]``
  after planning and before preprocessing, e.g. ``{"batch_size": 2}`` or a narrower network
  ``{"architecture": {"arch_kwargs": {"features_per_stage": [8, 16, 32, 64, 128]}}}``).

Resume: each stage is skipped when its output is complete (raw dataset renamed into place, a marker after
preprocessing, ``checkpoint_final.pth`` after training); a fold folder holding ``checkpoint_latest.pth``
continues with ``--c``. A changed ``fingerprint``/params/data wipes the checkpoints folder first. nnU-Net's
training is not seeded (its data loading is non-deterministic). SIGTERM/SIGUSR1/SIGINT during training are
forwarded to nnU-Net and the run reports ``status == "preempted"`` (rerun continues from nnU-Net's latest
checkpoint, written every 50 epochs). The final model is copied into ``<final>.tmp`` and renamed to
``outputs.final`` (``segmenter.json`` + ``nnunet/{plans.json, dataset.json, fold_*/checkpoint_final.pth}``).
``outputs.curve`` (epoch, train_loss, val_loss, pseudo_dice, ema_pseudo_dice, lr, seconds) comes
from the logger state stored in the final checkpoint. ``TrainResult.step`` counts **epochs** and
``seconds_per_step`` is seconds per epoch.

Inference (:class:`NnUNetSegmenter`)
------------------------------------
The network (deep supervision off) is rebuilt from the copied plans with nnU-Net's own
``nnUNetPredictor.initialize_from_trained_model_folder``. ``forward(x)``: per-image z-score of ``x``, zero
padding (after normalisation, as nnU-Net pads) to a multiple of the network's total stride, one
full-image forward pass (no sliding window, no mirroring test-time augmentation), crop, then the
softmax logits ``l`` of the K+1 classes become per-channel logits ``out_c = l_{c+1} - logsumexp_{j != c+1} l_j``
= ``log p_{c+1} - log(1 - p_{c+1})``, so ``sigmoid(out_c)`` is exactly nnU-Net's softmax probability of
class ``c + 1``. ``predict_masks`` (``sigmoid > 0.5``) therefore marks pixels where a class has the majority;
this equals nnU-Net's argmax except at pixels where no class exceeds 0.5.
Encoder features: the network's ``encoder`` (PlainConvEncoder / ResidualEncoder, returning its skips) -
the deepest stage, global-average-pooled (``D`` = features of the last stage).
"""

from .commands import entry_point, nnunet_env, run_command
from .dataset import encode_labels, export_dataset
from .inference import NnUNetSegmenter, load_nnunet_segmenter, softmax_to_channel_logits
from .params import INTENSITY_OFFSET, NnUNetCommandError, dataset_folder_name, default_nnunet_params, nnunet_params
from .training import loss_curve_rows, train_nnunet_segmenter

__all__ = [
    "DEFAULT_NNUNET_PARAMS",
    "INTENSITY_OFFSET",
    "NnUNetCommandError",
    "NnUNetSegmenter",
    "dataset_folder_name",
    "default_nnunet_params",
    "encode_labels",
    "entry_point",
    "export_dataset",
    "load_nnunet_segmenter",
    "loss_curve_rows",
    "nnunet_env",
    "nnunet_params",
    "run_command",
    "softmax_to_channel_logits",
    "train_nnunet_segmenter",
]


def __getattr__(name: str):
    """``DEFAULT_NNUNET_PARAMS``: the schema's nnU-Net params defaults (:func:`default_nnunet_params`), read from
    config/schema.yaml when first asked for."""
    if name == "DEFAULT_NNUNET_PARAMS":
        return default_nnunet_params()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
