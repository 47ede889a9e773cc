"""Downstream segmentation networks (MONAI) and their encoder features.

The downstream evaluations of ViCTr (Table 3), MedSyn2 (Table 5) and MAISI-v2 train a standard MONAI
segmentation network on real and/or synthetic slices. Here the networks are 2D, multi-label (one
sigmoid channel per condition mask):

* ``unet``: :class:`monai.networks.nets.UNet` (``spatial_dims=2``);
* ``unetr``: :class:`monai.networks.nets.UNETR` (``spatial_dims=2``);
* ``swinunetr``: :class:`monai.networks.nets.SwinUNETR` (``spatial_dims=2``);
* ``nnunetv2``: nnU-Net v2 plans, preprocesses and trains its own network (:mod:`.nnunet`; ``params``:
  :data:`medsynth.downstream.nnunet.DEFAULT_NNUNET_PARAMS`). It cannot be built untrained:
  :func:`medsynth.downstream.train.train_segmenter` trains it and :func:`load_segmenter` returns a
  :class:`~medsynth.downstream.nnunet.NnUNetSegmenter` (same logits contract as the MONAI networks).

``cfg = {"type": ..., "params": {...}}`` (config ``downstream.model``): :func:`segmenter_config` fills in
the schema's defaults (type ``unet``; the small params of each type, e.g. unet ``channels [16, 32, 64]``),
and ``params`` are passed to the MONAI class unchanged.

Encoder features (the self-trained extractor of the pipeline's Fréchet distance, "MFID")
-----------------------------------------------------------------------------------------
:func:`encoder_features` runs the network in eval mode under ``no_grad`` with a forward hook on its
encoder's deepest module and returns that output as a ``(B, D)`` vector:

* ``unet``: MONAI builds ``UNet.model`` recursively as ``Sequential(down, SkipConnection(sub), up)``,
  where ``sub`` is again such a 3-block ``Sequential`` except at the bottom, where it is the bottom
  layer (a ``ResidualUnit`` or ``Convolution``, ``channels[-1]`` features at the lowest resolution).
  :func:`unet_bottom` walks ``model[1].submodule`` until it is not a ``Sequential`` whose middle is a
  ``SkipConnection``; its output is global-average-pooled: ``D = channels[-1]``.
* ``unetr``: the ViT (``model.vit``), its token sequence averaged over tokens: ``D = hidden_size``.
* ``swinunetr``: the Swin transformer (``model.swinViT``), its last (deepest) feature map
  global-average-pooled: ``D = 16 * feature_size``.
* ``nnunetv2``: the nnU-Net network's ``encoder``, its deepest skip global-average-pooled.

Nothing in these paths is random in eval mode (dropout off, instance norm without running statistics),
so features are deterministic for fixed weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsynth.fsutil import atomic_dir

__all__ = [
    "SEGMENTER_TYPES",
    "segmenter_config",
    "build_segmenter",
    "unet_bottom",
    "encoder_module",
    "encoder_features",
    "save_segmenter",
    "load_segmenter",
]

SEGMENTER_TYPES = ("unet", "unetr", "swinunetr", "nnunetv2")
WEIGHTS = "model.safetensors"
CONFIG = "segmenter.json"


def segmenter_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` (config ``downstream.model``, ``{"type", "params"}``) with the schema's defaults filled in: type
    ``unet``, and the params of its type that ``params`` leaves out (nnunetv2: its adapter's settings, see
    :func:`medsynth.downstream.nnunet.nnunet_params`); ``params: null`` = none given."""
    from medsynth.settings import section

    model = dict(cfg)
    if "params" in model and model["params"] is None:  # null: the type's defaults only (config docs)
        model["params"] = {}
    if "type" in model:
        model["type"] = str(model["type"]).lower()
        if model["type"] not in SEGMENTER_TYPES:
            raise ValueError(f"unknown segmenter type {model['type']!r}; expected one of {SEGMENTER_TYPES}")
    return section("downstream", {"model": model})["model"]


def _model_cfg(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    model = segmenter_config(cfg)
    kind, params = model["type"], dict(model["params"])
    for reserved in ("spatial_dims", "in_channels", "out_channels"):
        if reserved in params:
            raise ValueError(f"segmenter params must not set {reserved!r} (fixed by the task)")
    return kind, params


def build_segmenter(cfg: Mapping[str, Any], in_channels: int, out_channels: int) -> nn.Module:
    """A 2D MONAI segmentation network from ``{"type": "unet" | "unetr" | "swinunetr", "params": {...}}``.

    The network outputs logits ``(B, out_channels, H, W)`` (apply a sigmoid per channel).
    """
    from monai.networks.nets import UNETR, SwinUNETR, UNet

    kind, params = _model_cfg(cfg)
    if kind == "nnunetv2":
        raise ValueError("nnunetv2 segmenters are planned and built by nnU-Net: train them with train_segmenter "
                         "and load them with load_segmenter")
    common = {"spatial_dims": 2, "in_channels": int(in_channels), "out_channels": int(out_channels)}
    cls = {"unet": UNet, "unetr": UNETR, "swinunetr": SwinUNETR}[kind]
    model = cls(**common, **params)
    model.segmenter_channels = (int(in_channels), int(out_channels))  # type: ignore[assignment]
    return model


def unet_bottom(model: nn.Module) -> nn.Module:
    """The bottom (deepest encoder) layer of a :class:`monai.networks.nets.UNet` (see module docstring)."""
    from monai.networks.layers import SkipConnection

    block = getattr(model, "model", None)
    if not (isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection)):
        raise TypeError(f"{type(model).__name__} does not have MONAI UNet's Sequential(down, skip, up) structure")
    while True:
        sub = block[1].submodule
        if isinstance(sub, nn.Sequential) and len(sub) == 3 and isinstance(sub[1], SkipConnection):
            block = sub
            continue
        return sub


def _pool_tokens(out: Any) -> torch.Tensor:
    x = out[0] if isinstance(out, (tuple, list)) else out
    return x.mean(dim=1)


def _pool_map(out: Any) -> torch.Tensor:
    x = out[-1] if isinstance(out, (tuple, list)) else out
    return x.mean(dim=tuple(range(2, x.ndim)))


def encoder_module(model: nn.Module) -> tuple[nn.Module, Callable[[Any], torch.Tensor]]:
    """The module whose output is the encoder feature, and how to reduce that output to ``(B, D)``."""
    from monai.networks.nets import UNETR, SwinUNETR, UNet

    from medsynth.downstream.nnunet import NnUNetSegmenter

    if isinstance(model, NnUNetSegmenter):
        return model.encoder, _pool_map
    if isinstance(model, UNet):
        return unet_bottom(model), _pool_map
    if isinstance(model, UNETR):
        return model.vit, _pool_tokens
    if isinstance(model, SwinUNETR):
        return model.swinViT, _pool_map
    raise TypeError(f"no encoder feature rule for {type(model).__name__}")


@torch.no_grad()
def encoder_features(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Encoder feature vectors ``(B, D)`` (float32, on the CPU) of images ``x`` ``(B, 1, H, W)``.

    Runs in eval mode (the model's mode is restored after) with a forward hook on
    :func:`encoder_module`; deterministic for fixed weights.
    """
    module, reduce = encoder_module(model)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _inp, out: captured.append(reduce(out).detach()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats: list[torch.Tensor] = []
    try:
        for i in range(0, len(x), batch_size):
            captured.clear()
            model(torch.as_tensor(x[i:i + batch_size]).float().to(device))
            if len(captured) != 1:
                raise RuntimeError(f"encoder hook fired {len(captured)} times in one forward pass")
            feats.append(captured[0].float().cpu())
    finally:
        handle.remove()
        model.train(was_training)
    if not feats:
        return torch.zeros(0, 0)
    return torch.cat(feats).flatten(1)


def save_segmenter(model: nn.Module, cfg: Mapping[str, Any], folder: str | Path,
                   meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` (weights) + ``segmenter.json`` (model config, channel counts, ``meta``), atomically."""
    from safetensors.torch import save_model

    kind, params = _model_cfg(cfg)
    if kind == "nnunetv2":
        raise ValueError("nnunetv2 segmenters are written by train_segmenter (nnU-Net's model folder)")
    out = Path(folder)
    in_ch, out_ch = _channels(model)
    record = {"model": {"type": kind, "params": params}, "in_channels": in_ch, "out_channels": out_ch,
              "class": f"{type(model).__module__}.{type(model).__qualname__}", "meta": dict(meta or {})}
    with atomic_dir(out) as tmp:  # a process killed while saving leaves no folder under the final name
        save_model(model, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


def _channels(model: nn.Module) -> tuple[int, int]:
    """``(in_channels, out_channels)`` recorded by :func:`build_segmenter` (or MONAI UNet's attributes)."""
    channels = getattr(model, "segmenter_channels", None)
    if channels is not None:
        return int(channels[0]), int(channels[1])
    if hasattr(model, "in_channels") and hasattr(model, "out_channels"):
        return int(model.in_channels), int(model.out_channels)
    raise TypeError(f"{type(model).__name__} was not built by build_segmenter: channel counts unknown")


def load_segmenter(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A segmenter written by :func:`save_segmenter`, in eval mode; its json record is ``model.segmenter_record``."""
    from safetensors.torch import load_model

    folder = Path(folder)
    record = json.loads((folder / CONFIG).read_text())
    if record["model"]["type"] == "nnunetv2":
        from medsynth.downstream.nnunet import load_nnunet_segmenter

        return load_nnunet_segmenter(folder, device=device)
    model = build_segmenter(record["model"], record["in_channels"], record["out_channels"])
    load_model(model, str(folder / WEIGHTS), strict=True, device=str(device))
    model.to(device).eval()
    model.segmenter_record = record  # type: ignore[assignment]
    return model
