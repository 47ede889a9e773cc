"""``flux``: diffusers ``FluxTransformer2DModel`` (ViCTr on Flux).

Tokens are 2x2-packed latents (``in_channels`` = 4 x channels, ``patch_size`` 1); 2-d ``img_ids``
(0, row, col) and ``txt_ids`` (zeros); timestep (and ``guidance``, for guidance-distilled models) in
[0, 1], multiplied by 1000 inside; the text mask goes in as ``joint_attention_kwargs["attention_mask"]``
over the joint ``[text; image]`` sequence; ``sum(axes_dims_rope) == attention_head_dim``; needs
``pooled_projections`` (the ``flux`` text encoder's CLIP-L pooled output, :mod:`medsynth.models.text`;
without one, the masked mean of the tokens). Hub repositories keep it in
``transformer/``.
"""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from .adapter import BackboneAdapter, Conditions, as_batch_t, resolve_pooled

__all__ = ["FluxAdapter", "flux_position_ids", "pack_latents", "unpack_latents"]


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """Flux packing: ``(B, C, H, W) -> (B, H/2 * W/2, 4C)``, feature index ``c * 4 + 2i + j``."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"flux packs 2x2 patches: height and width must be even, got {h}x{w}")
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: ``(B, H/2 * W/2, 4C) -> (B, C, H, W)``."""
    b, _, f = x.shape
    c = f // 4
    return x.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def flux_position_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Flux image ids for a packed ``(H/2, W/2)`` grid: ``(H/2 * W/2, 3)`` with (0, row, col)."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


class FluxAdapter(BackboneAdapter):
    """``flux``: 2x2-packed latents, position ids, the text mask over the joint sequence (module docstring)."""
    kind = "flux"
    model_class = FluxTransformer2DModel
    default_subfolder = "transformer"
    input_layers = ("x_embedder",)
    features_per_channel = 4

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        pooled = resolve_pooled(self.kind, model, text, keep, cond.pooled)
        b, (h, w) = x.shape[0], x.shape[-2:]
        packed = pack_latents(x)
        img_ids = flux_position_ids(h, w, device=x.device, dtype=x.dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype)
        kwargs = {}
        if keep is not None:  # joint sequence is [text; image]
            full = torch.cat([keep, torch.ones(b, packed.shape[1], dtype=torch.bool, device=x.device)], dim=1)
            full = full | ~keep.any(dim=1, keepdim=True)
            kwargs["joint_attention_kwargs"] = {"attention_mask": full[:, None, None, :]}
        g = as_batch_t(cond.guidance, b, x.device, x.dtype) if model.config.guidance_embeds else None
        out = model(
            hidden_states=packed, encoder_hidden_states=text, pooled_projections=pooled, timestep=t,
            img_ids=img_ids, txt_ids=txt_ids, guidance=g, **kwargs,
        ).sample
        return unpack_latents(out, h, w)
