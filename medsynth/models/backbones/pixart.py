"""``pixart``: diffusers ``PixArtTransformer2DModel`` (ViCTr on PixArt-alpha).

``out_channels`` defaults to 8 (learned sigma), so set it; text goes through ``caption_channels -> inner
dim``, so ``cross_attention_dim`` must equal heads x head dim; ``sample_size == 128`` switches on the
resolution / aspect-ratio embeddings (then inner dim % 3 == 0), which get the size of an 8x VAE's image
as PixArt's pipeline passes it; timestep ``t * 1000`` (AdaLayerNormSingle); ``encoder_attention_mask``.
Hub repositories keep it in ``transformer/``.

The released PixArt-alpha models predict noise and a variance (learned sigma: ``out_channels`` 8 for
4 latent channels; its pipeline keeps the first half). Loaded with ``params.out_channels: 4``, the
output head keeps only the first four channels' rows (:meth:`PixArtAdapter.narrow_output`): the
model's noise prediction is unchanged, and fine-tuning trains no variance (no loss here uses one).
"""

from __future__ import annotations

import torch
from diffusers import PixArtTransformer2DModel
from torch import nn

from .adapter import BackboneAdapter, Conditions


def _head_rows(patch: int, out_channels: int, keep: int) -> torch.Tensor:
    """Rows of PixArt's ``proj_out`` that make output channels ``< keep`` (row ``(p * patch + q) * out + c``)."""
    return torch.tensor([pq * out_channels + c for pq in range(patch * patch) for c in range(keep)])


class PixArtAdapter(BackboneAdapter):
    """``pixart``: ``t * 1000``, optional resolution / aspect-ratio embeddings (module docstring)."""
    kind = "pixart"
    model_class = PixArtTransformer2DModel
    default_subfolder = "transformer"
    input_layers = ("pos_embed.proj",)

    def narrow_output(self, model: nn.Module, out_channels: int) -> bool:
        have = int(model.out_channels)
        if have != 2 * out_channels:
            return False
        rows = _head_rows(int(model.config.patch_size), have, out_channels)
        head = model.proj_out
        narrowed = nn.Linear(head.in_features, len(rows), bias=head.bias is not None,
                             device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            narrowed.weight.copy_(head.weight[rows])
            if head.bias is not None:
                narrowed.bias.copy_(head.bias[rows])
        model.proj_out, model.out_channels = narrowed, out_channels
        model.register_to_config(out_channels=out_channels)
        return True

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
