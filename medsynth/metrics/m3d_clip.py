"""M3D-CLIP's image encoder (ViCTr's "MFID" network), built here from MONAI blocks; no remote code runs.

Facts from the published code (BAAI-DCAI/M3D, read, not copied):

* ``LaMed/src/model/CLIP.py``: ``M3DCLIPConfig`` defaults ``in_channels=1, img_size=(32, 256, 256),
  patch_size=(4, 16, 16), hidden_size=768, mlp_dim=3072, num_layers=12, num_heads=12,
  pos_embed="perceptron", dropout_rate=0, spatial_dims=3``; ``M3DCLIP`` holds ``vision_encoder``
  (the ViT below, ``classification=True``), ``language_encoder`` (a BERT), ``mm_vision_proj`` /
  ``mm_language_proj`` (``Linear(hidden, hidden)``) and ``logit_scale``. ``encode_image`` =
  ``normalize(mm_vision_proj(vision_encoder(x)[0]))`` and the contrastive loss uses token 0 (CLS):
  the feature here is that L2-normalised projected CLS token, ``[N, hidden_size]``.
* ``LaMed/src/model/multimodal_encoder/vit.py``: MONAI's ViT with ``patch_embedding``
  (``PatchEmbeddingBlock``), ``blocks`` (``TransformerBlock(hidden, mlp_dim, heads, 0, qkv_bias=False)``),
  ``norm`` (``LayerNorm``, applied to all tokens) and ``cls_token`` (prepended), no classification head.
  M3D-CLIP predates MONAI 1.4, whose ``TransformerBlock`` adds an (unused without cross-attention)
  ``norm_cross_attn``; it is removed here so the published keys load with ``strict=True``.
* Input (README "Prepare your 3D medical image" and ``Data/process/m3d_cap_data_prepare.py``):
  ``1 x 32 x 256 x 256`` (slices, rows, columns) of axial slices as displayed, min-max normalised to
  [0, 1] per volume, then MONAI ``CropForeground()`` (voxels > 0) and ``Resize(..., mode="bilinear")``.

The Hugging Face folder (registry model ``m3d_clip``) gives the sizes in ``config.json`` (the fields
of ``M3DCLIPConfig``) and the weights in ``model.safetensors`` (or ``pytorch_model.bin``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from torch import nn

from medsynth.io.state_dict import load_weights
from medsynth.metrics.clip_weights import CheckpointLayoutError, load_image_side

__all__ = ["M3DClipConfig", "M3DClipImageEncoder", "UNUSED_PREFIXES", "load_m3d_clip", "m3d_input"]

UNUSED_PREFIXES = ("language_encoder.", "mm_language_proj.", "logit_scale")
"""Keys of the published ``M3DCLIP`` state dict that belong to the text side (not loaded)."""
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class M3DClipConfig:
    """The image-side fields of M3D-CLIP's ``config.json`` (defaults: ``M3DCLIPConfig`` in ``CLIP.py``)."""

    in_channels: int = 1
    img_size: tuple[int, int, int] = (32, 256, 256)
    patch_size: tuple[int, int, int] = (4, 16, 16)
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    pos_embed: str = "perceptron"
    spatial_dims: int = 3

    @classmethod
    def from_json(cls, path: str | Path) -> M3DClipConfig:
        """Read ``config.json`` of the published folder; other fields (text side, ``auto_map``) are ignored."""
        raw = json.loads(Path(path).read_text())
        if raw.get("model_type", "m3d_clip") != "m3d_clip":
            raise CheckpointLayoutError(f"{path}: model_type {raw['model_type']!r}, expected 'm3d_clip'")
        values = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
        for key in ("img_size", "patch_size"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        cfg = cls(**values)
        if cfg.spatial_dims != 3 or cfg.in_channels != 1:
            raise CheckpointLayoutError(f"{path}: expected a 1-channel 3D encoder, got {cfg}")
        return cfg


def _block(cfg: M3DClipConfig) -> TransformerBlock:
    block = TransformerBlock(cfg.hidden_size, cfg.mlp_dim, cfg.num_heads, 0.0, qkv_bias=False)
    if hasattr(block, "norm_cross_attn"):  # MONAI >= 1.4; absent from M3D-CLIP's checkpoint, unused here
        del block.norm_cross_attn
    return block


class M3DViT(nn.Module):
    """M3D's ``ViT(classification=True)``: patch embedding, CLS token, blocks, final LayerNorm on all tokens."""

    def __init__(self, cfg: M3DClipConfig) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbeddingBlock(cfg.in_channels, cfg.img_size, cfg.patch_size, cfg.hidden_size,
                                                   cfg.num_heads, proj_type=cfg.pos_embed, dropout_rate=0.0,
                                                   spatial_dims=cfg.spatial_dims)
        self.blocks = nn.ModuleList(_block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, D, H, W]`` -> ``[B, 1 + patches, hidden]`` (token 0: CLS)."""
        x = self.patch_embedding(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def m3d_input(volumes: torch.Tensor, img_size: tuple[int, int, int] = (32, 256, 256),
              hu_window: tuple[float, float] | None = None) -> torch.Tensor:
    """M3D's network input ``[N, 1, *img_size]`` in [0, 1] from ``[N, 1, X, Y, Z]`` RAS+ volumes (any units).

    Axes become (slices, rows, columns) = (z, posterior-ward y, patient-left-ward x): axial slices as a
    radiological viewer shows them, M3D-Cap's stacked PNG slices (the slice direction is not fixed
    by M3D-Cap; z ascending here). Then, per volume as in ``m3d_cap_data_prepare.py``: min-max to
    [0, 1], ``CropForeground`` (voxels > 0), trilinear ``Resize`` to ``img_size``. ``hu_window``
    clips first (M3D prescribes none: its source slices were exported already windowed).
    """
    from monai.transforms import CropForeground, Resize

    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"expected [N, 1, X, Y, Z] volumes, got {tuple(volumes.shape)}")
    x = volumes.detach().float()
    if hu_window is not None:
        x = x.clamp(*hu_window)
    x = x.permute(0, 1, 4, 3, 2).flip(3, 4)
    crop, resize = CropForeground(), Resize(spatial_size=list(img_size), mode="bilinear")
    out = []
    for v in x:
        v = v - v.min()
        v = v / v.max().clamp_min(1e-8)
        if bool((v > 0).any()):
            v = crop(v)
        out.append(torch.as_tensor(resize(v)).as_subclass(torch.Tensor).float())  # not a MetaTensor
    return torch.stack(out)


class M3DClipImageEncoder(nn.Module):
    """M3D-CLIP's image side with the published key names (``vision_encoder.*``, ``mm_vision_proj.*``).

    ``forward`` takes ``[N, 1, X, Y, Z]`` volumes (HU or any affine rescaling of them: the input is
    min-max normalised per volume) and returns the ``[N, hidden_size]`` L2-normalised CLS embedding.
    """

    def __init__(self, cfg: M3DClipConfig | None = None, hu_window: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.config = cfg or M3DClipConfig()
        self.hu_window = hu_window
        self.vision_encoder = M3DViT(self.config)
        self.mm_vision_proj = nn.Linear(self.config.hidden_size, self.config.hidden_size)

    @property
    def feature_dim(self) -> int:
        """Length of one feature vector."""
        return self.config.hidden_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features of preprocessed input ``[N, 1, *img_size]`` (``M3DCLIP.encode_image``, token 0)."""
        return F.normalize(self.mm_vision_proj(self.vision_encoder(x)[:, 0]), dim=-1)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        """``[N, 1, X, Y, Z]`` volumes -> ``[N, hidden_size]`` features (:func:`m3d_input`, then :meth:`encode`)."""
        device = next(self.parameters()).device
        return self.encode(m3d_input(volumes, self.config.img_size, self.hu_window).to(device))


def _folder_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a transformers-layout folder: one safetensors file, a sharded index, or a ``.bin``."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_weights(folder / shard))
            return state
        return dict(load_weights(path))
    raise FileNotFoundError(f"{folder}: none of {', '.join(WEIGHT_FILES)} (M3D-CLIP's transformers layout)")


def load_m3d_clip(folder: str | Path, hu_window: tuple[float, float] | None = None) -> M3DClipImageEncoder:
    """The image encoder in eval mode from the fetched folder (``config.json`` + weights), strictly loaded."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (M3D-CLIP's transformers layout)")
    net = M3DClipImageEncoder(M3DClipConfig.from_json(config), hu_window)
    load_image_side(net, _folder_state(folder), unused=UNUSED_PREFIXES, source=str(folder))
    return net.eval().requires_grad_(False)
