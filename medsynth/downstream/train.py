"""Train and evaluate a downstream segmenter (ViCTr Table 3, MedSyn2 Table 5, MAISI-v2 downstream).

Training
--------
:func:`train_segmenter` trains a MONAI network (:func:`medsynth.downstream.model.build_segmenter`)
with the project's resumable loop (:func:`medsynth.train.train`: AdamW, cosine schedule, checkpoints,
exact resume, SIGTERM/SIGUSR1 preemption). The loss (:class:`SegmentationStep`) is multi-label:
``DiceLoss(sigmoid=True)`` (MONAI, per sample and channel) + ``BCEWithLogitsLoss``, one sigmoid per
condition channel (channels may overlap).

Augmentation and exact resume: for the ``real_aug`` setting the step augments its micro-batch on the
CPU before the forward pass (:func:`medsynth.downstream.data.augmentation`). MONAI random transforms
draw from their own numpy ``RandomState``, not from torch's global RNG, so the step re-seeds the
``Compose`` (``set_random_state``) with a seed drawn from the loop's per-(step, micro-batch, rank)
CPU generator, then augments the samples in order. The augmented batch is therefore a function of
``(seed, step, micro, rank)`` and the batch only - a resumed run sees the same augmentations as an
uninterrupted one.

Evaluation
----------
:func:`evaluate_segmenter` predicts the real test slices (sigmoid > 0.5 per channel) and computes
per-channel Dice and HD95 with MONAI through ``mask_metrics`` (:mod:`medsynth.metrics.masks`, formerly
:mod:`medsynth.vae.metrics`): per sample, averaged over samples whose reference channel is non-empty.
HD95 is in mm when ``mask_metrics`` accepts a ``spacing`` argument and a pixel ``spacing`` is given,
otherwise in pixels; the result's ``hd95_unit`` records which. ``mdsc`` / ``mhd95`` are the means over
channels that are non-empty in the reference (``mhd95`` ignores channels whose HD95 is undefined
because every prediction of that channel is empty).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsynth.downstream.data import apply_augmentation, augmentation, as_images, as_labels
from medsynth.downstream.model import build_segmenter, save_segmenter
from medsynth.launch import is_main_process
from medsynth.metrics.masks import channel_means
from medsynth.train.data import TensorDictDataset
from medsynth.train.loop import TrainConfig, TrainOutputs, TrainResult, derive_seed, torch_threads, train

__all__ = [
    "TRAIN_KEYS",
    "SegmentationStep",
    "train_settings",
    "train_config",
    "train_segmenter",
    "predict_masks",
    "evaluate_segmenter",
    "metrics_from_masks",
]

#: the keys of config ``downstream`` a training run takes (the others choose data and settings); their
#: defaults are the schema's (:func:`train_settings`)
TRAIN_KEYS = ("model", "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "max_grad_norm", "seed",
              "checkpoint_every", "keep_checkpoints", "log_every", "threads", "progress", "augmentation",
              "dice_weight", "bce_weight")


class SegmentationStep:
    """``loss_step`` for :func:`medsynth.train.train`: ``dice_weight * Dice + bce_weight * BCE`` on logits.

    ``augment``: augmentation config (``downstream.augmentation``; keys left out take the schema's
    defaults) or ``None`` for no augmentation; ``dice_weight`` / ``bce_weight``: config ``downstream``'s.
    The ``Compose`` is built lazily for the batch's spatial size and re-seeded every micro-batch from the
    loop's generator (see module docstring).
    """

    def __init__(self, augment: Mapping[str, Any] | None, dice_weight: float, bce_weight: float):
        from monai.losses import DiceLoss

        self.augment_cfg = dict(augment) if augment is not None else None
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.dice = DiceLoss(sigmoid=True, include_background=True, reduction="mean")
        self.bce = nn.BCEWithLogitsLoss()
        self._transforms: dict[tuple[int, ...], Any] = {}

    def transform(self, spatial_size: Sequence[int]):
        """The (cached) augmentation ``Compose`` for slices of ``spatial_size``."""
        key = tuple(int(s) for s in spatial_size)
        if key not in self._transforms:
            self._transforms[key] = augmentation(self.augment_cfg, key, seed=0)
        return self._transforms[key]

    def augment_batch(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented copies (CPU, then back on the input's device); a function of the generator's state."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        x, y = apply_augmentation(self.transform(images.shape[2:]), images, labels, seed=seed)
        return x.to(images.device), y.to(labels.device)

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        images, labels = batch["image"].float(), batch["label"].float()
        if self.augment_cfg is not None:
            images, labels = self.augment_batch(images, labels, generator)
        logits = model(images).float()
        dice = self.dice(logits, labels)
        bce = self.bce(logits, labels)
        return {"loss": self.dice_weight * dice + self.bce_weight * bce, "dice_loss": dice.detach(),
                "bce": bce.detach()}


def train_settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """A downstream training config: ``cfg`` (keys of :data:`TRAIN_KEYS`, and ``fingerprint``, the
    :func:`medsynth.train.loop.run_fingerprint` of the run's inputs, so that stale checkpoints are not
    resumed) with every training key, those left out taking the schema's defaults (config ``downstream``),
    and ``fingerprint`` (``""`` when not given: no inputs recorded). Unknown keys are an error."""
    from medsynth.settings import section

    c = dict(cfg or {})
    fingerprint = str(c.pop("fingerprint", ""))  # the run's identity, not a config key
    unknown = set(c) - set(TRAIN_KEYS)
    if unknown:
        raise ValueError(f"unknown downstream training keys {sorted(unknown)}; known: {sorted(TRAIN_KEYS)}")
    full = section("downstream", c)
    return {"fingerprint": fingerprint, **{k: full[k] for k in TRAIN_KEYS}}


def train_config(cfg: Mapping[str, Any] | None, out_dir: str | Path) -> TrainConfig:
    """The loop's :class:`TrainConfig` from a downstream training config (see :func:`train_settings`)."""
    c = train_settings(cfg)
    return TrainConfig(steps=int(c["steps"]), batch_size=int(c["batch_size"]), lr=float(c["lr"]),
                       weight_decay=float(c["weight_decay"]), warmup_steps=int(c["warmup_steps"]),
                       max_grad_norm=c["max_grad_norm"], checkpoint_every=int(c["checkpoint_every"]),
                       keep_checkpoints=int(c["keep_checkpoints"]), log_every=int(c["log_every"]),
                       seed=int(c["seed"]), output_dir=Path(out_dir), save_final=False,
                       progress=bool(c["progress"]), fingerprint=str(c["fingerprint"]))


def train_segmenter(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                    cfg: Mapping[str, Any] | None, outputs: TrainOutputs | str | Path, augment: bool = False
                    ) -> tuple[nn.Module, TrainResult]:
    """Train a segmenter on ``images`` (N, 1, H, W) in [-1, 1] and binary ``labels`` (N, C, H, W).

    ``cfg`` keys (config ``downstream``; those left out take the schema's defaults, :func:`train_settings`):
    ``model`` ({type, params}), ``steps``, ``batch_size``, ``lr``, ``weight_decay``, ``warmup_steps``,
    ``max_grad_norm``, ``seed``, ``checkpoint_every``, ``keep_checkpoints``, ``log_every``, ``threads``
    (torch intra-op threads during training), ``progress``, ``augmentation`` (used when ``augment``),
    ``dice_weight``, ``bce_weight``, and ``fingerprint``. Weights are initialised from ``derive_seed(seed, "init")``.
    ``outputs``: where the run writes (:class:`~medsynth.train.TrainOutputs`, or a folder with its layout
    and ``segmenter/`` as the final model); a checkpoint in ``outputs.checkpoints`` resumes. On completion
    the model (eval mode) is written with :func:`save_segmenter` to ``outputs.final``
    (``result.final_dir``); a preempted run writes only its checkpoint. ``model.type: nnunetv2`` trains
    through nnU-Net instead (:func:`medsynth.downstream.nnunet.train_nnunet_segmenter`: same outputs,
    ``result.step`` in epochs; the loop keys ``steps``, ``lr``, ... do not apply).
    """
    c = train_settings(cfg)
    x, y = as_images(images), as_labels(labels)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need equally many (> 0) images and labels, got {len(x)} and {len(y)}")
    if str(c["model"]["type"]).lower() == "nnunetv2":
        from medsynth.downstream.nnunet import train_nnunet_segmenter

        with torch_threads(c["threads"]):
            return train_nnunet_segmenter(x, y, c, TrainOutputs.of(outputs, "segmenter"), augment=augment)
    paths = TrainOutputs.of(outputs, "segmenter")
    out = paths.final.parent
    with torch_threads(c["threads"]):
        torch.manual_seed(derive_seed(int(c["seed"]), "init"))
        model = build_segmenter(c["model"], in_channels=x.shape[1], out_channels=y.shape[1])
        step = SegmentationStep(dict(c["augmentation"] or {}) if augment else None,
                                dice_weight=c["dice_weight"], bce_weight=c["bce_weight"])
        result = train(model, step, TensorDictDataset({"image": x, "label": y}), train_config(c, out), outputs=paths)
    model.eval()
    if result.status == "completed" and is_main_process():  # one writer in a multi-process launch
        meta = {"n_train": int(len(x)), "augment": bool(augment), "steps": result.step,
                "train": json.loads(json.dumps({k: v for k, v in c.items() if k != "fingerprint"}, default=str))}
        result.final_dir = save_segmenter(model, c["model"], paths.final, meta=meta)
    return model, result


@torch.no_grad()
def predict_masks(model: nn.Module, images: torch.Tensor | np.ndarray, threshold: float = 0.5,
                  batch_size: int = 32) -> torch.Tensor:
    """Binary predictions ``sigmoid(logits) > threshold`` as a bool CPU tensor ``(N, C, H, W)`` (eval mode)."""
    x = as_images(images)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for i in range(0, len(x), batch_size):
            out.append((torch.sigmoid(model(x[i:i + batch_size].to(device)).float()) > threshold).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def metrics_from_masks(pred: torch.Tensor, ref: torch.Tensor, names: Sequence[str],
                       spacing: Sequence[float] | float | None = None) -> dict[str, Any]:
    """Per-channel Dice/HD95 of binary ``pred`` against binary ``ref`` + ``mdsc``, ``mhd95``, ``n``, ``hd95_unit``,
    and ``values``: the per-sample metrics (:func:`~medsynth.metrics.masks.mask_metric_values`, for intervals)."""
    names = list(names)
    pred, ref = torch.as_tensor(pred).bool(), as_labels(ref).bool()
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != reference shape {tuple(ref.shape)}")
    if len(names) != ref.shape[1]:
        raise ValueError(f"{len(names)} names for {ref.shape[1]} channels")
    from medsynth.metrics.masks import mask_metric_values, mask_metrics

    unit = "pixel" if spacing is None else "mm"
    values = mask_metric_values(pred, ref, spacing)
    per = mask_metrics(pred, ref, names, spacing=spacing, values=values)
    means = channel_means({n: per[n] for n in names}, ("dice", "hd95"), missing=math.nan)
    result: dict[str, Any] = {"channels": {n: dict(per[n]) for n in names},
                              "mdsc": means["dice"], "mhd95": means["hd95"],
                              "n": int(len(ref)), "n_channels_present": means["n_channels"],
                              "hd95_unit": unit, "spacing": list(np.atleast_1d(spacing).astype(float))
                              if spacing is not None else None, "values": values}
    return result


def evaluate_segmenter(model: nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                       names: Sequence[str], spacing: Sequence[float] | float | None = None,
                       batch_size: int = 32) -> dict[str, Any]:
    """Dice/HD95 of ``model`` on real test slices (see module docstring).

    Returns ``{"channels": {name: {"dice", "hd95", ...}}, "mdsc", "mhd95", "n", "n_channels_present",
    "hd95_unit", "spacing", "values"}``.
    """
    pred = predict_masks(model, images, threshold=0.5, batch_size=batch_size)
    return metrics_from_masks(pred, labels, names, spacing=spacing)
