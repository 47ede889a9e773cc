"""``maisi_unet3d``: MONAI's MAISI diffusion UNet with an optional ControlNet (MAISI-v2), wrapped in
:class:`medsynth.models.maisi_backbone.MaisiBackbone`.

Timesteps on MONAI's ``RFlowScheduler`` scale (``t * 1000``, same direction as ours); ``context`` only
when the UNet has cross-attention (``with_conditioning``); no text mask. ``params.mask_input`` says where
``predict(..., mask=)`` routes the mask: ``concat`` (input channels), ``control`` (the ControlNet's
conditioning only; ``unet_params.in_channels`` = latent channels) or ``both``. A MAISI release checkpoint
(a single ``.pt`` / ``.safetensors`` file of UNet weights) loads as well as a diffusers folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..maisi_backbone import MaisiBackbone
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

    def load_release_file(self, path: str, params: dict) -> nn.Module | None:
        if not Path(path).is_file():
            return None
        model = MaisiBackbone(**params)  # a MAISI release checkpoint: UNet weights only
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("unet_state_dict", state)
        model.unet.load_state_dict(state)
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
        if tuple(mask.shape[2:]) == size:
            return mask
        shrink = all(s <= m for s, m in zip(size, mask.shape[2:]))
        return F.interpolate(mask, size=size, mode="area" if shrink else "trilinear",
                             **({} if shrink else {"align_corners": False}))

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        context = text if model.unet.with_conditioning else None
        if model.unet.include_spacing_input and cond.spacing is None:
            raise ValueError("this maisi_unet3d has include_spacing_input: pass spacing=(B, 3) voxel spacing")
        return model(x, t * 1000, context=context, control=cond.control,
                     conditioning_scale=cond.conditioning_scale, spacing=cond.spacing)
