"""``maisi_unet3d``: MONAI's MAISI diffusion UNet with an optional ControlNet (MAISI-v2), wrapped in
:class:`medsynth.models.maisi_backbone.MaisiBackbone`.

Timesteps on MONAI's ``RFlowScheduler`` scale (``t * 1000``, same direction as ours); ``context`` only
when the UNet has cross-attention (``with_conditioning``); no text mask. ``params.mask_input`` says where
``predict(..., mask=)`` routes the mask: ``concat`` (input channels), ``control`` (the ControlNet's
conditioning only; ``unet_params.in_channels`` = latent channels) or ``both``.

A MAISI release checkpoint loads as well as a diffusers folder: ``pretrained`` names the UNet's file
(``models/diff_unet_3d_rflow-ct.pt``: ``unet_state_dict``, and a ``scale_factor`` not used here, where the
latents are z-normalised with the tuned VAE's statistics), ``controlnet_pretrained_path`` the ControlNet's
(``models/controlnet_3d_rflow-ct.pt``: ``controlnet_state_dict``); both load strictly into the
architecture ``params`` describe, at the release's input width, which is then widened with zero weights
for concatenated mask channels. Spacing, modality class and the ControlNet's label encoding:
:class:`~medsynth.models.maisi_backbone.MaisiBackbone`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsynth.io.state_dict import load_weights

from ..maisi_backbone import MaisiBackbone, binarize_label_map, label_map
from .adapter import BackboneAdapter, Conditions


class MaisiUNet3DAdapter(BackboneAdapter):
    """``maisi_unet3d``: nested UNet / ControlNet params, mask routing, release checkpoints (module docstring)."""
    kind = "maisi_unet3d"
    model_class = MaisiBackbone
    input_layers = ("unet.conv_in.conv", "controlnet.conv_in.conv")
    takes_text_mask = False
    takes_control = True

    def config_spatial_dims(self, params: dict) -> int:
        return 3

    def model_spatial_dims(self, model: nn.Module) -> int:
        return 3

    def in_channels(self, model: nn.Module) -> int:
        return int(model.config.unet_params["in_channels"])

    def record_in_channels(self, model: nn.Module, in_channels: int) -> None:
        model.register_to_config(unet_params=dict(model.config.unet_params, in_channels=in_channels))
        if model.config.controlnet_params is not None:
            model.register_to_config(controlnet_params=dict(model.config.controlnet_params, in_channels=in_channels))

    def split_in_channels(self, params: dict) -> tuple[dict, int | None]:
        if "unet_params" not in params:
            return dict(params), None
        unet = dict(params["unet_params"])
        want_in = unet.pop("in_channels", None)
        return {**params, "unet_params": unet}, want_in

    def pretrained_value(self, have: Any, want: Any) -> Any:
        if isinstance(want, dict) and isinstance(have, dict):
            return {k: have.get(k) for k in want}
        return have

    def load_release_file(self, path: str, params: dict, cfg: dict) -> nn.Module | None:
        if not Path(path).is_file():
            return None
        unet_state = _state(path, "unet_state_dict")
        release_in = int(unet_state["conv_in.conv.weight"].shape[1])
        built = {**params, "unet_params": {**params["unet_params"], "in_channels": release_in}}
        control_path = cfg.get("controlnet_pretrained_path")
        if control_path:  # the ControlNet's own weights, not a copy of the UNet's encoder
            built["controlnet_from_unet"] = False
        model = MaisiBackbone(**built)
        model.unet.load_state_dict(unet_state)
        if control_path:
            if model.controlnet is None:
                raise ValueError("controlnet_pretrained_path is set but params.controlnet_params is null")
            model.controlnet.load_state_dict(_state(control_path, "controlnet_state_dict"))
        return model

    def mask_routing(self, model: nn.Module) -> tuple[bool, bool]:
        how = str(getattr(model.config, "mask_input", "concat") or "concat")
        return how in ("concat", "both"), how in ("control", "both")

    def control_grid(self, model: nn.Module, mask: torch.Tensor, latent_spatial) -> torch.Tensor:
        """The mask resized to the ControlNet's conditioning grid: latent size x ``2 ** (levels - 1)``."""
        if model.controlnet is None:
            raise ValueError("maisi_unet3d mask_input routes the mask to the ControlNet, but there is none")
        levels = len(model.config.controlnet_params["conditioning_embedding_num_channels"])
        size = tuple(int(s) * 2 ** (levels - 1) for s in latent_spatial)
        if tuple(mask.shape[2:]) != size:
            shrink = all(s <= m for s, m in zip(size, mask.shape[2:]))
            mask = F.interpolate(mask, size=size, mode="area" if shrink else "trilinear",
                                 **({} if shrink else {"align_corners": False}))
        ids = model.config.get("control_label_ids")
        if not ids:
            return mask
        bits = int(model.config.controlnet_params["conditioning_embedding_in_channels"])
        return binarize_label_map(label_map(mask > 0, list(ids)), bits).to(mask.dtype)

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        context = text if model.unet.with_conditioning else None
        b, c = x.shape[0], model.config
        spacing = cond.spacing
        if model.unet.include_spacing_input and spacing is None:
            if c.get("spacing_mm") is None:
                raise ValueError("this maisi_unet3d has include_spacing_input: set params.spacing_mm (the training "
                                 "volumes' voxel spacing in mm) or pass spacing=(B, 3)")
            spacing = torch.tensor(c.spacing_mm, dtype=x.dtype, device=x.device).mul(100).expand(b, 3)  # MAISI: mm x 100
        class_labels = None
        if model.unet.num_class_embeds is not None:
            if c.get("class_label") is None:
                raise ValueError(f"this maisi_unet3d has num_class_embeds {model.unet.num_class_embeds}: set "
                                 "params.class_label (the modality class; MAISI-v2's CT is 1)")
            class_labels = torch.full((b,), int(c.class_label), dtype=torch.long, device=x.device)
        return model(x, t * 1000, context=context, control=cond.control, conditioning_scale=cond.conditioning_scale,
                     class_labels=class_labels, spacing=spacing)


def _state(path: str, key: str) -> dict:
    """The state dict of a release file (``.pt`` or ``.safetensors``), under ``key`` when the file nests it."""
    state = load_weights(path)
    return state.get(key, state)
