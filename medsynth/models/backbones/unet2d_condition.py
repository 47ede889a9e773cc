"""``unet2d_condition``: diffusers ``UNet2DConditionModel`` (ViCTr on Stable Diffusion).

Timestep ``t * 1000`` (DDPM-style integer scale, sinusoidal embedding); the text mask goes in as
``encoder_attention_mask`` (turned into an additive bias inside). Hub repositories keep it in ``unet/``.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .adapter import BackboneAdapter, Conditions


class UNet2DConditionAdapter(BackboneAdapter):
    """``unet2d_condition``: ``t * 1000``, the text mask as ``encoder_attention_mask``."""
    kind = "unet2d_condition"
    model_class = UNet2DConditionModel
    default_subfolder = "unet"
    input_layers = ("conv_in",)

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, UNet2DConditionModel) and model.config.get("addition_embed_type") != "text_time"

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        return model(x, t * 1000, encoder_hidden_states=text, encoder_attention_mask=keep).sample
