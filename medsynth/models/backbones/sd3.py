"""``sd3``: diffusers ``SD3Transformer2DModel`` (ViCTr on Stable Diffusion 3, MMDiT).

Timestep ``t * 1000`` (the SD3 pipeline's ``sigma * 1000``); needs ``pooled_projections`` (the ``sd3`` text
encoder's two projected CLIP vectors, :mod:`medsynth.models.text`; without one, the masked mean of the
tokens); its joint-attention processor takes no text mask; positions are cropped
from a ``pos_embed_max_size`` grid, which must cover ``H / patch_size``. Hub repositories keep it in
``transformer/``.
"""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel
from torch import nn

from .adapter import BackboneAdapter, Conditions, resolve_pooled


class SD3Adapter(BackboneAdapter):
    """``sd3``: ``t * 1000``, a pooled text vector, no text mask (module docstring)."""
    kind = "sd3"
    model_class = SD3Transformer2DModel
    default_subfolder = "transformer"
    input_layers = ("pos_embed.proj",)
    takes_text_mask = False

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        pooled = resolve_pooled(self.kind, model, text, keep, cond.pooled)
        return model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t * 1000).sample
