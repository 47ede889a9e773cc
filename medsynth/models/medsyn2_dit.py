"""MedSyn2's modified DiT (MedSyn2 Sec. 3.2, eq. 1-2, Supp. 7.1 "Modified DiT"), for 2D and 3D latents.

One block, as in MedSyn2 eq. 2 and Fig. 1 (``c`` = timestep embedding, ``c_text`` = compound text tokens):

    u = h + gate_1 * MHSA(modulate(LN(h), shift_1, scale_1))                 gated self-attention
    v = u + gate_2 * MHCA(modulate(LN(u), shift_2, scale_2), c_text)         gated cross-attention
    w = v + gate_3 * FFN(modulate(LN(v), shift_3, scale_3))
    h' = Conv(w)                                                              depthwise 3^d, then 1^d

* AdaLN (Supp. 7.1): "three groups of scale1, shift, scale2 ... (scale1 x h + shift) x scale2, adopted
  three times, surrounding the MHSA, MHCA, FFN". We use DiT's adaLN-Zero form of it: ``scale1`` is
  ``1 + scale``, ``scale2`` is the residual ``gate``, both regressed from ``c`` by one zero-initialised
  linear layer, so every block starts as the identity (DiT, Peebles & Xie 2023).
* Gated attention (eq. 2): ``A_h = sigma(G_h) * softmax(Q_h K_h^T / sqrt(d_h)) V_h`` with
  ``G_h = h W_h^G`` a projection of the *query* tokens, elementwise per head (``W_h^G`` has ``d_h``
  outputs like ``W_h^Q``), in MHSA and MHCA ("gated attention is incorporated in every layer").
  ``gated_attention=False`` removes ``W^G`` (ablation, Supp. 7.5).
* Conv (eq. 2 last line, Supp. 7.1): a depthwise ``3x3(x3)`` convolution then a pointwise ``1x1(x1)``
  convolution over the token grid, same shape in and out. Reading: we add it as a residual branch
  whose pointwise kernel starts at zero (``conv_residual=True``), so the block stays an identity at
  initialisation like the rest of adaLN-Zero; ``conv_residual=False`` applies ``h' = Conv(w)`` literally.
  ``depthwise_conv=False`` removes it (ablation, Supp. 7.5).
* Patchify (eq. 1): the noisy latent and the mask latent are concatenated on channels *before* the
  patch embedding, so ``in_channels`` = latent + mask channels and ``out_channels`` = latent channels.
  Positions are fixed sin-cos embeddings computed for the grid at hand (any size divisible by the patch).
* ``prediction`` records what the output means: ``"x0"`` (MedSyn2 Sec. 3.3, x-prediction trained with
  the v-loss of :mod:`medsynth.objectives.x_prediction`) or ``"velocity"`` (ViCTr / MAISI-v2).
  The time input is ``t`` in [0, 1] (``t = 1`` noise, :mod:`medsynth.objectives.rectified_flow`),
  embedded as ``t * time_scale``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["MedSyn2DiT", "GatedAttention", "DepthwiseSeparableConv", "sincos_position_embedding"]

PREDICTIONS = ("x0", "velocity")


def sincos_position_embedding(grid: tuple[int, ...], dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed sin-cos embedding of an N-d token grid, shape ``(prod(grid), dim)``, row-major order.

    Each axis gets an equal even share of ``dim`` (the remainder is zero), as DiT does for 2D.
    """
    per_axis = (dim // (2 * len(grid))) * 2
    if per_axis == 0:
        raise ValueError(f"hidden size {dim} too small for a {len(grid)}-d position embedding")
    coords = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float64) for n in grid], indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, device=device, dtype=torch.float64) / (per_axis / 2))
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.to(dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (scaled) timesteps, shape ``(B, dim)`` (DiT / ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: ``x * (1 + scale) + shift`` with per-sample ``shift``/``scale`` of shape ``(B, D)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class GatedAttention(nn.Module):
    """Multi-head (self or cross) attention with MedSyn2's output gate (eq. 2).

    ``out = W_O [ sigma(G_h) * softmax(Q_h K_h^T / sqrt(d_h)) V_h ]_h`` with ``Q, G`` from the query
    tokens ``x`` and ``K, V`` from ``context`` (``x`` itself for self-attention). With ``gated=False``
    there is no ``G`` and this is plain multi-head attention. ``context_mask`` (``(B, L)``, True = keep)
    masks padded text tokens.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, gated: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        context_dim = context_dim or dim
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_gate = nn.Linear(dim, dim) if gated else None  # W^G, one d_h-wide block per head
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, d = x.shape
        context = x if context is None else context
        heads = lambda y: y.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context))
        attn_mask = None
        if context_mask is not None:
            keep = context_mask.to(torch.bool)
            keep = keep | ~keep.any(dim=1, keepdim=True)  # a sample with no valid token attends to all
            attn_mask = keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2)  # (B, N, H, d_h)
        if self.to_gate is not None:
            out = out * torch.sigmoid(self.to_gate(x).unflatten(-1, (self.num_heads, self.head_dim)))
        return self.to_out(out.reshape(b, n, d))


class DepthwiseSeparableConv(nn.Module):
    """MedSyn2's Conv(.) (eq. 2, Supp. 7.1): depthwise ``3^d`` kernel then pointwise ``1^d``, same shape out."""

    def __init__(self, dim: int, spatial_dims: int, residual: bool = True):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.depthwise = conv(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.pointwise = conv(dim, dim, kernel_size=1)
        self.residual = residual
        if residual:  # identity at initialisation, like the adaLN-Zero gates
            nn.init.zeros_(self.pointwise.weight)
            nn.init.zeros_(self.pointwise.bias)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        b, n, d = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, d, *grid)
        y = self.pointwise(self.depthwise(x)).reshape(b, d, n).transpose(1, 2)
        return tokens + y if self.residual else y


class MedSyn2Block(nn.Module):
    """AdaLN-Zero around gated MHSA, gated MHCA and FFN, then the depthwise-separable conv (eq. 2)."""

    def __init__(self, dim, num_heads, context_dim, mlp_ratio, spatial_dims, gated, conv, conv_residual):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = GatedAttention(dim, num_heads, gated=gated)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = GatedAttention(dim, num_heads, context_dim=context_dim, gated=gated)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)
        self.conv = DepthwiseSeparableConv(dim, spatial_dims, residual=conv_residual) if conv else None

    def forward(self, h, c, text, text_mask, grid: tuple[int, ...]):
        s1, sc1, g1, s2, sc2, g2, s3, sc3, g3 = self.adaLN_modulation(c).chunk(9, dim=-1)
        h = h + g1[:, None] * self.self_attn(modulate(self.norm1(h), s1, sc1))
        h = h + g2[:, None] * self.cross_attn(modulate(self.norm2(h), s2, sc2), text, text_mask)
        h = h + g3[:, None] * self.ffn(modulate(self.norm3(h), s3, sc3))
        return self.conv(h, grid) if self.conv is not None else h


class MedSyn2DiT(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """MedSyn2's DiT over a 2D or 3D latent grid, with the mask latent patchified together with the image.

    ``forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None)``:
    ``hidden_states`` is ``[z_t; z_m]`` of shape ``(B, in_channels, *spatial)``, ``timestep`` is ``t`` in
    [0, 1] (shape ``(B,)`` or scalar), ``encoder_hidden_states`` the compound text tokens ``(B, L,
    cross_attention_dim)``. Returns ``(B, out_channels, *spatial)``: ``x0`` or the velocity according to
    ``config.prediction``. Paper scale (MedSyn2 Sec. 4.2): patch 2, 16 layers, width 1152, text 768.
    LoRA through diffusers' ``add_adapter`` (attention projections: ``to_q``, ``to_k``, ``to_v``, ``to_gate``,
    ``to_out``).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 8,
        out_channels: int = 4,
        patch_size: int = 2,
        hidden_size: int = 1152,
        depth: int = 16,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        cross_attention_dim: int = 768,
        gated_attention: bool = True,
        depthwise_conv: bool = True,
        conv_residual: bool = True,
        prediction: str = "x0",
        time_scale: float = 1000.0,
        frequency_embedding_size: int = 256,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.x_embedder = conv(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.blocks = nn.ModuleList(
            MedSyn2Block(hidden_size, num_heads, cross_attention_dim, mlp_ratio, spatial_dims,
                         gated_attention, depthwise_conv, conv_residual)
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.proj_out = nn.Linear(hidden_size, patch_size**spatial_dims * out_channels)
        for layer in (self.adaLN_out[1], self.proj_out):  # DiT: zero-initialised output
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.gradient_checkpointing = False

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``(B, C, *spatial)`` -> tokens ``(B, N, hidden)`` and the token grid."""
        cfg = self.config
        if x.ndim != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"expected (B, {cfg.in_channels}, *{cfg.spatial_dims} spatial dims) = latent + mask channels, "
                f"got {tuple(x.shape)}"
            )
        if any(s % cfg.patch_size for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} is not divisible by patch_size {cfg.patch_size}")
        h = self.x_embedder(x)
        grid = tuple(h.shape[2:])
        return h.flatten(2).transpose(1, 2), grid

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Tokens ``(B, N, p^d * C_out)`` -> ``(B, C_out, *spatial)``."""
        p, c, d = self.config.patch_size, self.config.out_channels, self.config.spatial_dims
        x = tokens.reshape(tokens.shape[0], *grid, *([p] * d), c)
        if d == 2:
            x = torch.einsum("nhwpqc->nchpwq", x)
        else:
            x = torch.einsum("ndhwopqc->ncdohpwq", x)
        return x.reshape(tokens.shape[0], c, *[g * p for g in grid])

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        b = hidden_states.shape[0]
        h, grid = self.patchify(hidden_states)
        h = h + sincos_position_embedding(grid, h.shape[-1], device=h.device, dtype=h.dtype)[None]
        t = torch.as_tensor(timestep, device=h.device, dtype=torch.float32).reshape(-1).expand(b)
        c = self.t_embedder(timestep_embedding(t * self.config.time_scale, self.config.frequency_embedding_size).to(h.dtype))
        text = encoder_hidden_states.to(h.dtype)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(block, h, c, text, encoder_attention_mask, grid)
            else:
                h = block(h, c, text, encoder_attention_mask, grid)
        shift, scale = self.adaLN_out(c).chunk(2, dim=-1)
        out = self.unpatchify(self.proj_out(modulate(self.norm_out(h), shift, scale)), grid)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
