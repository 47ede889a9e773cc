"""CT-CLIP's image encoder (CT-ViT + ``to_visual_latent``; MedSyn2's CLIP score), written against its key names.

Facts from the published code (ibrahimethemhamamci/CT-CLIP, read, not copied):

* ``scripts/run_zero_shot.py``: ``CTViT(dim=512, codebook_size=8192, image_size=480, patch_size=20,
  temporal_patch_size=10, spatial_depth=4, temporal_depth=4, dim_head=32, heads=8)`` inside
  ``CTCLIP(dim_image=294912, dim_text=768, dim_latent=512, extra_latent_projection=False,
  downsample_image_embeds=False, use_all_token_embeds=False)``; ``CT-CLIP_v2.pt`` is that model's
  plain state dict (``CTCLIP.load`` = ``load_state_dict(torch.load(path))``).
* ``transformer_maskgit/ctvit.py``: the encoder path is ``to_patch_emb`` (Rearrange to
  ``b t h w (c pt p1 p2)``, LayerNorm, Linear, LayerNorm), a spatial transformer per frame with a
  continuous position bias (``spatial_rel_pos_bias``), a temporal transformer per patch column, then
  the cosine-similarity vector quantiser (``vq``, vector-quantize-pytorch 1.1.2: buffers
  ``_codebook.initted / cluster_size / embed``; the quantised token is the nearest code by cosine).
  ``to_patch_emb_first_frame`` and ``to_pixels*`` are in the state dict but unused by the encoder.
* ``transformer_maskgit/attention.py``: per layer ``[PEG (causal depth-wise 3x3x3 conv), Attention,
  None, FeedForward (GEGLU, inner int(4 * 2/3 * dim))]``; Attention has a bias-free LayerNorm
  (``gamma`` + buffer ``beta``), keys/values from the *un-normalised* input, L2-normalised q, k
  scaled by ``q_scale``/``k_scale`` and by 8, an empty ``null_kv``; PEG reshapes its tokens to
  ``video_shape`` as stored (in the temporal transformer that reinterprets memory; kept as published).
* ``CT_CLIP/ct_clip.py``: image embedding = mean of the encoded tokens over frames, flattened
  ``(h w d)``, ``to_visual_latent`` (``Linear(294912, 512, bias=False)``), L2-normalised: ``[N, 512]``.
* ``scripts/data_inference_nii.py``: HU clipped to [-1000, 1000] and divided by 1000; spacing
  resampled to 0.75 x 0.75 (in-plane) x 1.5 mm (trilinear); centre crop / pad (value -1) to
  480 x 480 x 240; fed as (slices, in-plane, in-plane). CT-RATE's arrays are S, L, P in that order
  (torchio issue #1282, comment of 2025-04-09 on CT-CLIP issue #41: "they trained with SLP+ images").

Sizes are read from the tensors of the file (:meth:`CTClipConfig.from_state_dict`); the tensors do not
fix the 240 frames, which stay the published constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from medsynth.io.state_dict import load_weights
from medsynth.metrics.clip_weights import CheckpointLayoutError, load_image_side

__all__ = ["CTClipConfig", "CTClipImageEncoder", "UNUSED_PREFIXES", "ct_clip_input", "load_ct_clip"]

UNUSED_PREFIXES = ("text_transformer.", "to_text_latent.", "to_text_latent_extra.", "to_visual_latent_extra.",
             "temperature")
"""Keys of ``CT-CLIP_v2.pt`` outside the image path (text side; the unused CLOOB copy of the image projection)."""
HU_WINDOW = (-1000.0, 1000.0)
SPACING_MM = (0.75, 0.75, 1.5)  # x, y, z


@dataclass(frozen=True)
class CTClipConfig:
    """CT-ViT / CTCLIP image-side sizes (defaults: ``run_zero_shot.py``)."""

    dim: int = 512
    image_size: int = 480
    patch_size: int = 20
    temporal_patch_size: int = 10
    spatial_depth: int = 4
    temporal_depth: int = 4
    dim_head: int = 32
    heads: int = 8
    codebook_size: int = 8192
    dim_latent: int = 512
    frames: int = 240

    @property
    def ff_inner(self) -> int:
        """FeedForward's inner width, ``int(4 * (2 / 3) * dim)`` (``attention.py``)."""
        return int(4 * (2 / 3) * self.dim)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], frames: int = 240) -> CTClipConfig:
        """The sizes a CTCLIP state dict's tensors fix (the published file gives the defaults)."""
        v = "visual_transformer."
        try:
            dim, patch_dim = state[f"{v}to_patch_emb.2.weight"].shape
            patch = math.isqrt(state[f"{v}to_patch_emb_first_frame.2.weight"].shape[1])
            heads = state[f"{v}spatial_rel_pos_bias.net.2.weight"].shape[0]
            dim_head = state[f"{v}enc_spatial_transformer.layers.0.1.q_scale"].shape[0]
            codebook = state[f"{v}vq._codebook.embed"].shape[-2]
            latent, dim_image = state["to_visual_latent.weight"].shape
        except KeyError as err:
            raise CheckpointLayoutError(f"not a CT-CLIP state dict: no {err.args[0]!r}") from None

        def depth(name: str) -> int:
            prefix = f"{v}{name}.layers."
            return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

        return cls(dim=dim, image_size=patch * math.isqrt(dim_image // dim), patch_size=patch,
                   temporal_patch_size=patch_dim // (patch * patch), spatial_depth=depth("enc_spatial_transformer"),
                   temporal_depth=depth("enc_temporal_transformer"), dim_head=dim_head, heads=heads,
                   codebook_size=codebook, dim_latent=latent, frames=frames)


class BiasFreeLayerNorm(nn.Module):
    """``attention.LayerNorm``: learned ``gamma``, a zero ``beta`` buffer (both in the state dict)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class PEG(nn.Module):
    """Position-generating depth-wise conv; causal along frames (pad 2 before, 0 after)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, video_shape: tuple[int, int, int, int]) -> torch.Tensor:
        shape = x.shape
        y = x.reshape(*video_shape, -1).permute(0, 4, 1, 2, 3)
        y = self.dsconv(F.pad(y, (1, 1, 1, 1, 2, 0)))
        return y.permute(0, 2, 3, 4, 1).reshape(shape)


class Attention(nn.Module):
    """CT-ViT self-attention (cosine-sim q/k, scale 8, optional additive bias), published parameter names."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, 8.0
        self.norm = BiasFreeLayerNorm(dim)
        self.context_norm = BiasFreeLayerNorm(dim)  # unused without context; in the state dict
        self.null_kv = nn.Parameter(torch.zeros(heads, 0, dim_head))  # num_null_kv = 0: empty
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        k, v = self.to_kv(x).chunk(2, dim=-1)  # from the input before the norm, as published
        q = self.to_q(self.norm(x))

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, -1).transpose(1, 2)

        q = F.normalize(heads(q), dim=-1) * self.q_scale
        k = F.normalize(heads(k), dim=-1) * self.k_scale
        bias = None if attn_bias is None else attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, heads(v), attn_mask=bias, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    """``x * gelu(gate)`` of the two halves of the last axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def _feed_forward(dim: int, inner: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * inner, bias=False), GEGLU(), nn.Dropout(0.0),
                         nn.Linear(inner, dim, bias=False))


class Transformer(nn.Module):
    """``attention.Transformer(peg=True, peg_causal=True)``: layers ``[PEG, Attention, None, FeedForward]``."""

    def __init__(self, cfg: CTClipConfig, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PEG(cfg.dim), Attention(cfg.dim, cfg.dim_head, cfg.heads), None,
                           _feed_forward(cfg.dim, cfg.ff_inner)]) for _ in range(depth))
        self.norm_out = BiasFreeLayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, video_shape: tuple[int, int, int, int],
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        for peg, attn, _, ff in self.layers:
            x = peg(x, video_shape) + x
            x = attn(x, attn_bias) + x
            x = ff(x) + x
        return self.norm_out(x)


class ContinuousPositionBias(nn.Module):
    """Per-head bias from an MLP of log-scaled relative 2D positions (``net.0.0``, ``net.1.0``, ``net.2``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1)),
                                  nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)), nn.Linear(dim, heads)])

    def forward(self, h: int, w: int) -> torch.Tensor:
        device = self.net[2].weight.device
        grid = torch.stack(torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                          indexing="ij")).reshape(2, -1).T
        rel = (grid[:, None, :] - grid[None, :, :]).float()
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        for layer in self.net:
            rel = layer(rel)
        return rel.permute(2, 0, 1)  # [heads, hw, hw]


class CosineCodebook(nn.Module):
    """vector-quantize-pytorch 1.1.2 ``CosineSimCodebook`` buffers; eval: nearest code by cosine similarity."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", F.normalize(torch.randn(1, codebook_size, dim), dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n, dim]`` -> the codebook rows (as stored) nearest to each token."""
        codes = self.embed[0]
        index = (F.normalize(x.float(), dim=-1) @ F.normalize(codes, dim=-1).T).argmax(dim=-1)
        return codes[index]


class VectorQuantize(nn.Module):
    """Holds the codebook under the published name ``vq._codebook`` (no projections: codebook dim = dim)."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self._codebook = CosineCodebook(dim, codebook_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._codebook(t[None])[0] for t in x])  # one volume at a time (memory)


class CTViTEncoder(nn.Module):
    """CT-ViT's encoder half with every key of the published ``visual_transformer`` (decoder heads kept, unused)."""

    def __init__(self, cfg: CTClipConfig) -> None:
        super().__init__()
        p, pt, dim = cfg.patch_size, cfg.temporal_patch_size, cfg.dim
        self.cfg = cfg
        self.spatial_rel_pos_bias = ContinuousPositionBias(dim, cfg.heads)
        self.to_patch_emb_first_frame = nn.Sequential(nn.Identity(), nn.LayerNorm(p * p), nn.Linear(p * p, dim),
                                                      nn.LayerNorm(dim))
        self.to_patch_emb = nn.Sequential(nn.Identity(), nn.LayerNorm(pt * p * p), nn.Linear(pt * p * p, dim),
                                          nn.LayerNorm(dim))
        self.enc_spatial_transformer = Transformer(cfg, cfg.spatial_depth)
        self.enc_temporal_transformer = Transformer(cfg, cfg.temporal_depth)
        self.vq = VectorQuantize(dim, cfg.codebook_size)
        self.to_pixels_first_frame = nn.Sequential(nn.Linear(dim, p * p))
        self.to_pixels = nn.Sequential(nn.Linear(dim, pt * p * p))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 1, frames, H, W]`` -> quantised tokens ``[B, t, h, w, dim]`` (``return_encoded_tokens=True``)."""
        p, pt = self.cfg.patch_size, self.cfg.temporal_patch_size
        b, _, f, hh, ww = video.shape
        t, h, w = f // pt, hh // p, ww // p
        x = video.reshape(b, t, pt, h, p, w, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, t, h, w, pt * p * p)
        x = self.to_patch_emb[1:](x)
        d, shape = x.shape[-1], (b, t, h, w)
        x = self.enc_spatial_transformer(x.reshape(b * t, h * w, d), shape, self.spatial_rel_pos_bias(h, w))
        x = x.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        x = self.enc_temporal_transformer(x, shape)
        x = x.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)
        return self.vq(x.reshape(b, t * h * w, d)).reshape(b, t, h, w, d)


def ct_clip_input(volumes_hu: torch.Tensor, cfg: CTClipConfig,
                  spacing: tuple[float, float, float] | None = None) -> torch.Tensor:
    """CT-CLIP's input ``[N, 1, frames, S, S]`` from ``[N, 1, X, Y, Z]`` RAS+ volumes in **HU**.

    HU clipped to [-1000, 1000] / 1000. With ``spacing`` (x, y, z mm) as published: trilinear resampling
    to 0.75 x 0.75 x 1.5 mm, centre crop / pad (value -1) to ``S x S x frames``; without it, a trilinear
    resize of the whole volume to that size. Axes then become S, L, P (CT-RATE's order, module docstring).
    """
    if volumes_hu.ndim != 5 or volumes_hu.shape[1] != 1:
        raise ValueError(f"expected [N, 1, X, Y, Z] volumes, got {tuple(volumes_hu.shape)}")
    x = volumes_hu.detach().float().clamp(*HU_WINDOW) / HU_WINDOW[1]
    target = (cfg.image_size, cfg.image_size, cfg.frames)
    if spacing is None:
        x = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
    else:
        size = [int(n * s / t) for n, s, t in zip(x.shape[2:], spacing, SPACING_MM)]
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        starts = [max((n - d) // 2, 0) for n, d in zip(x.shape[2:], target)]
        x = x[:, :, starts[0]:starts[0] + target[0], starts[1]:starts[1] + target[1], starts[2]:starts[2] + target[2]]
        pads = []
        for n, d in zip(reversed(x.shape[2:]), reversed(target)):
            pads += [(d - n) // 2, d - n - (d - n) // 2]
        x = F.pad(x, pads, value=-1.0)
    return x.permute(0, 1, 4, 2, 3).flip(3, 4)  # [N, 1, Z(S), X(L), Y(P)]


class CTClipImageEncoder(nn.Module):
    """``visual_transformer`` + ``to_visual_latent`` of CTCLIP: ``[N, 1, X, Y, Z]`` HU -> ``[N, dim_latent]``."""

    def __init__(self, cfg: CTClipConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or CTClipConfig()
        c = self.config
        self.visual_transformer = CTViTEncoder(c)
        self.to_visual_latent = nn.Linear((c.image_size // c.patch_size) ** 2 * c.dim, c.dim_latent, bias=False)

    @property
    def feature_dim(self) -> int:
        """Length of one feature vector."""
        return self.config.dim_latent

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Features of preprocessed input: mean over frames, flatten ``(h w d)``, project, L2-normalise."""
        tokens = self.visual_transformer(video).mean(dim=1)
        return F.normalize(self.to_visual_latent(tokens.reshape(tokens.shape[0], -1)), dim=-1)

    def forward(self, volumes_hu: torch.Tensor, spacing: tuple[float, float, float] | None = None) -> torch.Tensor:
        """``[N, 1, X, Y, Z]`` HU volumes (``spacing``: their voxel size in mm, optional) -> ``[N, dim_latent]``."""
        device = self.to_visual_latent.weight.device
        return self.encode(ct_clip_input(volumes_hu, self.config, spacing).to(device))


def load_ct_clip(path: str | Path, frames: int = 240) -> CTClipImageEncoder:
    """The image encoder in eval mode from ``CT-CLIP_v2.pt`` (safe loading; sizes from its tensors), strictly."""
    state = load_weights(path)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    net = CTClipImageEncoder(CTClipConfig.from_state_dict(state, frames))
    load_image_side(net, state, unused=UNUSED_PREFIXES, source=str(path))
    return net.eval().requires_grad_(False)
