"""The embedded study's medical-feature extractor: the encoder of the downstream segmenter trained on real
slices, as a torch-fidelity feature extractor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["SELF_EXTRACTOR", "SegmenterEncoder", "extractor_input_size", "resize_slices"]

#: torch-fidelity name under which the self-trained encoder is registered.
SELF_EXTRACTOR = "medsynth-segmenter-encoder"


class SegmenterEncoder(nn.Module):
    """``forward(x) -> (B, D)``: pooled deepest features of a downstream segmenter (for torch-fidelity).

    ``size``: ``(H, W)`` the images are resized to first (bilinear, antialiased) when they differ.
    """

    def __init__(self, segmenter: nn.Module, size: Sequence[int] | None = None):
        super().__init__()
        self.segmenter = segmenter
        self.size = tuple(int(v) for v in size) if size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from medsynth.downstream import encoder_features

        return encoder_features(self.segmenter, resize_slices(x, self.size))


def resize_slices(x: torch.Tensor, size: Sequence[int] | None, mode: str = "bilinear") -> torch.Tensor:
    """``(B, C, H, W)`` resized to ``size`` (unchanged when ``None`` or equal)."""
    if size is None or tuple(x.shape[2:]) == tuple(size):
        return x
    if mode == "nearest":
        return torch.nn.functional.interpolate(x.float(), size=tuple(size), mode="nearest")
    return torch.nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=False, antialias=True)


def extractor_input_size(segmenter: nn.Module, metrics_cfg: Mapping) -> list[int] | None:
    """``(H, W)`` the self-trained extractor takes: ``metrics.extractor_size``, else the segmenter's own
    ``params.img_size`` (UNETR / SwinUNETR), else ``None`` (any size: slices go in as they are)."""
    size = metrics_cfg.get("extractor_size")
    if size is None:
        size = ((getattr(segmenter, "segmenter_record", None) or {}).get("model", {}).get("params", {})
                .get("img_size"))
    if size is None:
        return None
    size = [int(size)] * 2 if isinstance(size, (int, float)) else [int(v) for v in size]
    if len(size) != 2:
        raise ValueError(f"metrics.extractor_size must be one number or [H, W], got {size}")
    return size
