"""``pixart``: diffusers ``PixArtTransformer2DModel`` (ViCTr on PixArt-alpha).

``out_channels`` defaults to 8 (learned sigma), so set it; text goes through ``caption_channels -> inner
dim``, so ``cross_attention_dim`` must equal heads x head dim; ``sample_size == 128`` switches on the
resolution / aspect-ratio embeddings (then inner dim % 3 == 0), which get the size of an 8x VAE's image
as PixArt's pipeline passes it; timestep ``t * 1000`` (AdaLayerNormSingle); ``encoder_attention_mask``.
Hub repositories keep it in ``transformer/``.
"""

from __future__ import annotations

import torch
from diffusers import PixArtTransformer2DModel
from torch import nn

from .adapter import BackboneAdapter, Conditions


class PixArtAdapter(BackboneAdapter):
    """``pixart``: ``t * 1000``, optional resolution / aspect-ratio embeddings (module docstring)."""
    kind = "pixart"
    model_class = PixArtTransformer2DModel
    default_subfolder = "transformer"
    input_layers = ("pos_embed.proj",)

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        b = x.shape[0]
        added = {"resolution": None, "aspect_ratio": None}
        if model.use_additional_conditions:
            h, w = x.shape[-2] * 8, x.shape[-1] * 8
            added = {
                "resolution": torch.tensor([[h, w]], dtype=x.dtype, device=x.device).expand(b, 2),
                "aspect_ratio": torch.tensor([[h / w]], dtype=x.dtype, device=x.device).expand(b, 1),
            }
        return model(
            x, encoder_hidden_states=text, timestep=t * 1000, added_cond_kwargs=added, encoder_attention_mask=keep
        ).sample
