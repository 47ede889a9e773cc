"""Loading a ``pretrained`` backbone and widening its input layer for concatenated mask channels.

With ``pretrained`` set and ``params.in_channels`` larger than the checkpoint's, the input layer is
widened with zero weights for the extra (mask) channels, so the loaded model's output is unchanged until
those weights train (the InstructPix2Pix recipe). ``params.out_channels`` half the checkpoint's drops a
learned-variance head where the adapter can (PixArt, :meth:`.adapter.BackboneAdapter.narrow_output`).
Any other ``params`` must agree with the checkpoint's config.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapter import BackboneAdapter

__all__ = ["BackbonePretrainedError", "expand_input_channels", "hub_offline", "load_pretrained"]


class BackbonePretrainedError(RuntimeError):
    """A ``pretrained`` backbone could not be loaded (offline, missing, or not matching ``params``)."""


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` asks for local files only."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _module_at(model: nn.Module, path: str) -> nn.Module | None:
    mod = model
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod


def expand_input_channels(adapter: BackboneAdapter, model: nn.Module, in_channels: int) -> nn.Module:
    """Widen the input layer to ``in_channels`` with zero weights for the new (trailing) channels.

    Concatenated mask channels then leave a pretrained model's output unchanged at first. For Flux,
    ``in_channels`` counts packed features (4 per latent channel); packing is channel-major, so the new
    channels' features come last as well. Updates the model config, so save_pretrained records it.
    """
    old = adapter.in_channels(model)
    if in_channels == old:
        return model
    if in_channels < old:
        raise ValueError(f"cannot shrink the input of a {adapter.kind} backbone from {old} to {in_channels} channels")
    for path in adapter.input_layers:
        layer = _module_at(model, path)
        if layer is None:
            continue
        w = layer.weight.data
        pad = torch.zeros(w.shape[0], in_channels - old, *w.shape[2:], dtype=w.dtype, device=w.device)
        layer.weight = nn.Parameter(torch.cat([w, pad], dim=1))
        if isinstance(layer, nn.Linear):
            layer.in_features = in_channels
        else:
            layer.in_channels = in_channels
    adapter.record_in_channels(model, in_channels)
    return model


def _normalise(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    if isinstance(v, dict):
        return {k: _normalise(x) for k, x in v.items()}
    return v


def load_pretrained(adapter: BackboneAdapter, cfg: dict, key: str) -> nn.Module:
    """The backbone ``cfg["pretrained"]`` names (a hub id, a local folder or a release file), checked
    against ``cfg["params"]``; ``key`` names the config entry in errors."""
    cls = adapter.model_class
    src = str(cfg["pretrained"])
    params = copy.deepcopy(cfg.get("params") or {})
    local_files_only = bool(cfg.get("local_files_only", hub_offline()))
    where = f"{key}.pretrained = {src!r}"
    try:
        model = adapter.load_release_file(src, params, cfg)
        if model is None:
            subfolder = cfg.get("subfolder")  # null (the schema's default): the folder itself or the adapter's
            if subfolder is None:
                subfolder = None if (Path(src) / "config.json").is_file() else adapter.default_subfolder
            model = cls.from_pretrained(src, subfolder=subfolder, local_files_only=local_files_only)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        hint = (
            " Only local files are read: name a model of config/models.yaml (the weights rule fetches it) or "
            f"a local folder in {key}.pretrained, or set {key}.pretrained: null to train from scratch."
        )
        raise BackbonePretrainedError(f"{where}: cannot load {cls.__name__}: {type(exc).__name__}: {exc}.{hint}") from exc

    params, want_in = adapter.split_in_channels(params)
    want_out = params.get("out_channels")
    if want_out is not None and want_out != model.config.get("out_channels") and adapter.narrow_output(model, int(want_out)):
        params.pop("out_channels")
    loaded = dict(model.config)
    for name, value in params.items():
        have = adapter.pretrained_value(loaded.get(name), value)
        if _normalise(have) != _normalise(value):
            raise BackbonePretrainedError(
                f"{where}: {key}.params.{name} = {value!r} differs from the checkpoint's {have!r}; "
                "only in_channels may differ (extra mask channels are added with zero weights)"
            )
    if want_in is not None:
        expand_input_channels(adapter, model, int(want_in))
    return model
