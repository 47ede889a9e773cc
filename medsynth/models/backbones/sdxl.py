"""``sdxl``: diffusers ``UNet2DConditionModel`` with SDXL's ``text_time`` additional embedding (ViCTr on SD-XL).

As :mod:`.unet2d_condition` (``t * 1000``, the text mask as ``encoder_attention_mask``, hub subfolder
``unet/``), plus SDXL's ``added_cond_kwargs``: ``text_embeds``, the pooled text vector (the ``sdxl`` text
encoder's projected CLIP-G vector, :mod:`medsynth.models.text`; without one, the masked mean of the
tokens; its width is ``projection_class_embeddings_input_dim - 6 *
addition_time_embed_dim``, 1280 for SDXL: CLIP-G's pooled projection), and ``time_ids``, the six micro
conditions (original height, width, crop top, left, target height, width) in pixels. Our slices are
never cropped or resized from another size, so both sizes are the image size SDXL's own VAE would
decode the latents to (latent size x 8) and the crop is (0, 0), what the SDXL pipeline passes for an
uncropped image of that size.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .adapter import Conditions, resolve_pooled
from .unet2d_condition import UNet2DConditionAdapter

#: SDXL's VAE downsampling factor: the pixel size the micro conditions name
SDXL_VAE_FACTOR = 8


def is_sdxl(model: nn.Module) -> bool:
    """Whether ``model`` is a UNet with SDXL's ``text_time`` additional embedding."""
    return isinstance(model, UNet2DConditionModel) and model.config.get("addition_embed_type") == "text_time"


def sdxl_time_ids(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 6)`` micro conditions of uncropped images the size of latents ``x`` (module docstring)."""
    h, w = (int(s) * SDXL_VAE_FACTOR for s in x.shape[-2:])
    return torch.tensor([h, w, 0, 0, h, w], dtype=dtype, device=x.device).expand(x.shape[0], 6)


class SDXLAdapter(UNet2DConditionAdapter):
    """``sdxl``: the UNet's forward plus ``text_embeds`` and ``time_ids`` (module docstring)."""
    kind = "sdxl"

    def matches(self, model: nn.Module) -> bool:
        return is_sdxl(model)

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        c = model.config
        width = int(c.projection_class_embeddings_input_dim) - 6 * int(c.addition_time_embed_dim)
        embeds = resolve_pooled(self.kind, model, text, keep, cond.pooled, dim=width)
        added = {"text_embeds": embeds, "time_ids": sdxl_time_ids(x, text.dtype)}
        return model(x, t * 1000, encoder_hidden_states=text, encoder_attention_mask=keep,
                     added_cond_kwargs=added).sample
