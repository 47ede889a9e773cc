"""The 3D downstream segmenter of MAISI-v2's tumour study (config ``volumes.downstream``, rule ``volume_downstream``).

A MONAI :class:`~monai.networks.nets.SegResNet` (``spatial_dims`` 3, one input channel, one sigmoid output
channel: the task's ROI) trained with the project's resumable loop (:func:`medsynth.train.train`: AdamW,
cosine schedule, checkpoints, exact resume, preemption) and scored per test volume.

Training patches: every step each volume of the batch gives one crop of ``patch_size`` voxels (clamped to
the volume size per axis; ``null``: the whole volume). With probability ``pos_fraction`` the crop is centred
on a random ROI voxel of that volume (when it has one; the crop is shifted to stay inside the volume),
otherwise it starts anywhere. Every draw comes from the loop's per-(step, micro-batch, rank) generator, so
a resumed run sees the same patches as an uninterrupted one. Loss: ``dice_weight * soft Dice +
ce_weight * BCE`` on the logits (MONAI ``DiceLoss(sigmoid=True, batch=True)``: one Dice over the whole
micro-batch, so patches without ROI voxels do not each pull towards an empty prediction).

Inference: :func:`monai.inferers.sliding_window_inference` with windows of the training patch size (the
whole volume when ``patch_size`` is null), ``sw_batch_size`` windows per pass and overlap ``sw_overlap``;
voxels with ``sigmoid > 0.5`` are ROI.

Per-case Dice (:func:`case_dice`): ``2 |P & R| / (|P| + |R|)`` of the binary prediction ``P`` and reference
``R`` of one volume; when both are empty it is 1.0 (nothing to find, nothing found), when exactly one is
empty it is 0.0 (MONAI's ``compute_dice`` with ``ignore_empty=False``). So every test case has a value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsynth.fsutil import atomic_dir
from medsynth.train.config import TrainConfig, TrainOutputs, TrainResult
from medsynth.train.data import TensorDictDataset
from medsynth.train.loop import derive_seed, torch_threads, train

__all__ = [
    "VolumePatchStep",
    "build_volume_segmenter",
    "case_dice",
    "load_volume_segmenter",
    "patch_shape",
    "predict_volumes",
    "save_volume_segmenter",
    "train_volume_segmenter",
    "volume_downstream_settings",
]

WEIGHTS = "model.safetensors"
CONFIG = "segmenter.json"


def volume_downstream_settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Config ``volumes.downstream`` with the schema's defaults filled in for the keys ``cfg`` leaves out."""
    from medsynth.settings import section

    return section("volumes", {"downstream": dict(cfg or {})})["downstream"]


def build_volume_segmenter(model_cfg: Mapping[str, Any]) -> nn.Module:
    """A 3D SegResNet from ``{"type": "segresnet", "params": {...}}`` (``volumes.downstream.model``): one input
    channel, one output channel (ROI logits)."""
    from monai.networks.nets import SegResNet

    kind = str(model_cfg.get("type", "segresnet")).lower()
    if kind != "segresnet":
        raise ValueError(f"volumes.downstream.model.type {kind!r}: only segresnet is supported")
    params = dict(model_cfg.get("params") or {})
    for reserved in ("spatial_dims", "in_channels", "out_channels"):
        if reserved in params:
            raise ValueError(f"volumes.downstream.model.params must not set {reserved!r} (fixed: 3, 1, 1)")
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=1, **params)


def patch_shape(patch_size: int | Sequence[int] | None, volume_shape: Sequence[int]) -> tuple[int, ...]:
    """The crop / window size: ``patch_size`` (one number or one per axis) clamped to ``volume_shape``;
    ``None`` = the whole volume."""
    shape = tuple(int(s) for s in volume_shape)
    if patch_size is None:
        return shape
    sizes = [int(patch_size)] * len(shape) if np.isscalar(patch_size) else [int(p) for p in patch_size]
    if len(sizes) != len(shape) or min(sizes) < 1:
        raise ValueError(f"volumes.downstream.patch_size {patch_size!r}: expected one positive number or "
                         f"{len(shape)} of them")
    return tuple(min(p, s) for p, s in zip(sizes, shape))


class VolumePatchStep:
    """``loss_step`` of :func:`medsynth.train.train`: random patches (module docstring), then
    ``dice_weight * Dice + ce_weight * BCE``. ``batch``: ``image`` (B, 1, X, Y, Z), ``label`` (B, 1, X, Y, Z)."""

    def __init__(self, patch_size: int | Sequence[int] | None, pos_fraction: float, dice_weight: float,
                 ce_weight: float):
        from monai.losses import DiceLoss

        self.patch_size = patch_size
        self.pos_fraction = float(pos_fraction)
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.dice = DiceLoss(sigmoid=True, batch=True)
        self.bce = nn.BCEWithLogitsLoss()

    def crop_starts(self, labels: torch.Tensor, patch: Sequence[int], generator: torch.Generator) -> list[list[int]]:
        """One crop corner per sample, drawn from ``generator`` (positive crops centred on an ROI voxel)."""
        shape = labels.shape[2:]
        starts = []
        for label in labels:
            positive = float(torch.rand(1, generator=generator)) < self.pos_fraction
            voxels = torch.nonzero(label[0] > 0) if positive else None
            if voxels is not None and len(voxels):
                centre = voxels[int(torch.randint(len(voxels), (1,), generator=generator))].tolist()
                start = [min(max(c - p // 2, 0), s - p) for c, p, s in zip(centre, patch, shape)]
            else:
                start = [int(torch.randint(s - p + 1, (1,), generator=generator)) for p, s in zip(patch, shape)]
            starts.append(start)
        return starts

    def patches(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's training patches (the whole volumes when the patch is the volume)."""
        patch = patch_shape(self.patch_size, images.shape[2:])
        if patch == tuple(images.shape[2:]):
            return images, labels
        xs, ys = [], []
        for i, start in enumerate(self.crop_starts(labels, patch, generator)):
            window = tuple(slice(a, a + p) for a, p in zip(start, patch))
            xs.append(images[(i, slice(None), *window)])
            ys.append(labels[(i, slice(None), *window)])
        return torch.stack(xs), torch.stack(ys)

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        images, labels = self.patches(batch["image"].float(), batch["label"].float(), generator)
        logits = model(images).float()
        dice, bce = self.dice(logits, labels), self.bce(logits, labels)
        return {"loss": self.dice_weight * dice + self.ce_weight * bce, "dice_loss": dice.detach(),
                "bce": bce.detach()}


def train_volume_segmenter(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                           cfg: Mapping[str, Any] | None, outputs: TrainOutputs | str | Path,
                           fingerprint: str = "") -> tuple[nn.Module, TrainResult]:
    """Train the 3D segmenter on ``images`` (N, 1, X, Y, Z) in [-1, 1] and binary ROI ``labels`` (N, 1, X, Y, Z).

    ``cfg``: config ``volumes.downstream`` (keys left out take the schema's defaults); ``fingerprint``: the
    :func:`~medsynth.train.loop.run_fingerprint` of the run's inputs (a checkpoint of other inputs is not
    resumed). ``outputs``: :class:`~medsynth.train.TrainOutputs` (or a folder with its layout, ``segmenter/``
    the final model). Weights start from ``derive_seed(seed, "init")``; a checkpoint in
    ``outputs.checkpoints`` resumes. On completion the model is written to ``outputs.final``
    (:func:`save_volume_segmenter`, ``result.final_dir``); a preempted run leaves only its checkpoint.
    """
    c = volume_downstream_settings(cfg)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels)).to(torch.uint8)
    if x.ndim != 5 or x.shape[1] != 1 or y.shape != x.shape or len(x) == 0:
        raise ValueError(f"need (N > 0, 1, X, Y, Z) images and labels of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    paths = TrainOutputs.of(outputs, "segmenter")
    config = TrainConfig(steps=int(c["steps"]), batch_size=int(c["batch_size"]), lr=float(c["lr"]),
                         weight_decay=float(c["weight_decay"]), warmup_steps=int(c["warmup_steps"]),
                         checkpoint_every=int(c["checkpoint_every"]), keep_checkpoints=int(c["keep_checkpoints"]),
                         log_every=int(c["log_every"]), seed=int(c["seed"]), output_dir=paths.final.parent,
                         save_final=False, progress=bool(c["progress"]), fingerprint=str(fingerprint))
    step = VolumePatchStep(c["patch_size"], c["pos_fraction"], c["dice_weight"], c["ce_weight"])
    with torch_threads(int(c["threads"])):
        torch.manual_seed(derive_seed(int(c["seed"]), "init"))
        model = build_volume_segmenter(c["model"])
        result = train(model, step, TensorDictDataset({"image": x, "label": y}), config, outputs=paths)
    model.eval()
    if result.status == "completed":
        meta = {"n_train": int(len(x)), "steps": int(result.step), "volume_shape": list(x.shape[2:]),
                "patch_size": list(patch_shape(c["patch_size"], x.shape[2:])),
                "train": {k: c[k] for k in c if k not in ("tasks", "settings", "train_select", "test_select")}}
        result.final_dir = save_volume_segmenter(model, c["model"], paths.final, meta=meta)
    return model, result


def save_volume_segmenter(model: nn.Module, model_cfg: Mapping[str, Any], folder: str | Path,
                          meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` (weights) + ``segmenter.json`` (model config, ``meta``) atomically."""
    from safetensors.torch import save_model

    record = {"model": {"type": "segresnet", "params": dict(model_cfg.get("params") or {})}, "spatial_dims": 3,
              "in_channels": 1, "out_channels": 1, "meta": dict(meta or {})}
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return Path(folder)


def load_volume_segmenter(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A segmenter written by :func:`save_volume_segmenter`, in eval mode (its record: ``model.segmenter_record``)."""
    from safetensors.torch import load_model

    record = json.loads((Path(folder) / CONFIG).read_text())
    model = build_volume_segmenter(record["model"])
    load_model(model, str(Path(folder) / WEIGHTS), strict=True, device=str(device))
    model.to(device).eval()
    model.segmenter_record = record  # type: ignore[assignment]
    return model


@torch.no_grad()
def predict_volumes(model: nn.Module, images: np.ndarray | torch.Tensor, patch_size: int | Sequence[int] | None,
                    sw_batch_size: int, overlap: float, threshold: float = 0.5) -> torch.Tensor:
    """Binary ROI predictions ``sigmoid > threshold`` (bool, CPU, (N, 1, X, Y, Z)) by sliding windows of
    ``patch_size`` (clamped; ``None``: the whole volume), one volume at a time, on the model's device."""
    from monai.inferers import sliding_window_inference

    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    device = next(model.parameters()).device
    roi = patch_shape(patch_size, x.shape[2:])
    was_training = model.training
    model.eval()
    out = []
    try:
        for volume in x:
            logits = sliding_window_inference(volume[None].to(device), roi, int(sw_batch_size), model,
                                              overlap=float(overlap))
            out.append((torch.sigmoid(torch.as_tensor(logits).float()) > threshold).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 1, *x.shape[2:]), dtype=torch.bool)


def case_dice(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> np.ndarray:
    """Dice of each case's binary prediction against its binary reference, ``(N,)`` float64, over all the
    voxels of a case (``(N, ...)`` arrays): 1.0 when both are empty, 0.0 when exactly one is."""
    from monai.metrics import compute_dice

    p, r = torch.as_tensor(np.asarray(pred)) > 0, torch.as_tensor(np.asarray(ref)) > 0
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != reference shape {tuple(r.shape)}")
    p, r = p.reshape(len(p), 1, -1).float(), r.reshape(len(r), 1, -1).float()
    return compute_dice(p, r, include_background=True, ignore_empty=False)[:, 0].double().numpy()
