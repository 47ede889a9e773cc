"""``medsyn2_dit``: MedSyn2's modified DiT (:class:`medsynth.models.medsyn2_dit.MedSyn2DiT`), 2D or 3D.

Time goes in as ``t`` in [0, 1] (embedded as ``t * time_scale`` inside); ``prediction: x0`` makes it an
x-prediction model (MedSyn2 Sec. 3.3), whose output :func:`~medsynth.models.backbones.as_velocity`
turns into a velocity.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..medsyn2_dit import MedSyn2DiT
from .adapter import BackboneAdapter, Conditions


class MedSyn2DiTAdapter(BackboneAdapter):
    """``medsyn2_dit``: 2D or 3D, velocity or x0 prediction (module docstring)."""
    kind = "medsyn2_dit"
    model_class = MedSyn2DiT
    input_layers = ("x_embedder",)

    def config_spatial_dims(self, params: dict) -> int:
        if "spatial_dims" in params:
            return int(params["spatial_dims"])
        return int(inspect.signature(MedSyn2DiT).parameters["spatial_dims"].default)

    def model_spatial_dims(self, model: nn.Module) -> int:
        return int(model.config.spatial_dims)

    def predicts_x0(self, model: nn.Module) -> bool:
        return str(model.config.prediction) == "x0"

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        return model(x, t, text, encoder_attention_mask=keep).sample
