"""A trained nnU-Net as a downstream segmenter: logits per channel, the normalisation reproduced."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .params import RECORD, ZSCORE_EPS



def softmax_to_channel_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K+1, ...)`` softmax logits (class 0 = background) -> ``(B, K, ...)`` per-class logits
    ``log p_c - log(1 - p_c)`` for classes ``1..K``, computed stably as ``l_c - logsumexp_{j != c} l_j``."""
    n = logits.shape[1]
    out = []
    for c in range(1, n):
        others = torch.cat([logits[:, :c], logits[:, c + 1:]], dim=1)
        out.append(logits[:, c] - torch.logsumexp(others, dim=1))
    return torch.stack(out, dim=1)


def total_stride(configuration_manager: Any, ndim: int = 2) -> list[int]:
    """The total downsampling of nnU-Net's network per spatial axis (inputs are padded to a multiple)."""
    strides = configuration_manager.network_arch_init_kwargs.get("strides") or \
        configuration_manager.pool_op_kernel_sizes
    total = [1] * ndim
    for s in strides:
        s = [s] * ndim if isinstance(s, int) else list(s)
        total = [a * int(b) for a, b in zip(total, s[-ndim:])]
    return total


class NnUNetSegmenter(nn.Module):
    """A trained nnU-Net 2D network as a downstream segmenter (see module docstring).

    ``forward(x)``: ``x`` ``(B, 1, H, W)`` in [-1, 1] -> per-channel logits ``(B, C, H, W)`` with
    ``sigmoid(out[:, c]) = softmax probability of class c + 1``. ``encoder`` is the network's encoder.
    """

    def __init__(self, network: nn.Module, num_channels: int, stride: Sequence[int] = (1, 1),
                 record: Mapping[str, Any] | None = None):
        super().__init__()
        self.network = network
        self.stride = tuple(int(s) for s in stride)
        self.segmenter_channels = (1, int(num_channels))
        self.segmenter_record = dict(record or {})

    @property
    def encoder(self) -> nn.Module:
        """The encoder of the nnU-Net network; its forward returns the skips, the last one is the deepest."""
        return self.network.encoder

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """nnU-Net's ``ZScoreNormalization`` per image and channel (population std, eps 1e-8)."""
        x = x.float()
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
        return (x - mean) / std.clamp_min(ZSCORE_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        h, w = z.shape[-2:]
        ph, pw = (-h) % self.stride[0], (-w) % self.stride[1]
        if ph or pw:
            z = nn.functional.pad(z, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        logits = self.network(z)
        if isinstance(logits, (list, tuple)):  # deep supervision left on: full resolution first
            logits = logits[0]
        logits = logits[..., ph // 2: ph // 2 + h, pw // 2: pw // 2 + w].float()
        return softmax_to_channel_logits(logits)


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """Silence nnU-Net's import-time prints about unset ``nnUNet_*`` folders."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def load_nnunet_segmenter(folder: str | Path, device: str | torch.device = "cpu") -> NnUNetSegmenter:
    """The :class:`NnUNetSegmenter` written to ``folder`` by :func:`train_nnunet_segmenter` (eval mode)."""
    folder = Path(folder)
    record = json.loads((folder / RECORD).read_text())
    info = record["nnunet"]
    with quiet_imports():
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
                                    allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder / info["model_folder"]), use_folds=(info["fold"],),
                                                       checkpoint_name=info["checkpoint"])
    n_heads = predictor.label_manager.num_segmentation_heads
    if predictor.label_manager.has_regions or n_heads - 1 != int(record["out_channels"]):
        raise ValueError(f"{folder}: nnU-Net model has {n_heads} output classes, expected background + "
                         f"{record['out_channels']} channels")
    model = NnUNetSegmenter(predictor.network, int(record["out_channels"]),
                            stride=total_stride(predictor.configuration_manager), record=record)
    return model.to(device).eval()
