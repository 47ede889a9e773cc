"""Loss steps for :func:`medsynth.train.loop.train`: rectified flow (+ EWC for ViCTr stage 1).

The model is called as ``model(x, t * time_scale)`` where ``x`` is the noisy image ``x_t``, with the
condition masks concatenated on the channel axis when ``condition_key`` is set (ViCTr: "we concatenate
Z_t with Z_s and feed them into the diffusion model"). Diffusers models return an object with
``.sample``; plain modules return the tensor. Conventions are those of :mod:`medsynth.objectives`:
``x0`` data, ``x1`` noise, ``x_t = (1 - t) x0 + t x1``, target velocity ``x1 - x0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from medsynth.objectives import interpolate, rectified_flow_loss, sample_timesteps
from medsynth.train.ewc import ewc_penalty

__all__ = ["EWCTerm", "call_model", "RectifiedFlowStep"]


def call_model(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``model(x, t)`` as a tensor (unpacks diffusers' ``.sample`` and tuples)."""
    out = model(x, t)
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


@dataclass
class EWCTerm:
    """The stage-1 penalty ``lam / 2 sum F (theta - theta*)^2`` (see :func:`medsynth.train.ewc.ewc_penalty`)."""

    anchor: Mapping[str, torch.Tensor]
    fisher: Mapping[str, torch.Tensor]
    lam: float

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return ewc_penalty(model, self.anchor, self.fisher, self.lam)


@dataclass
class RectifiedFlowStep:
    """``loss_step`` computing the rectified-flow velocity loss on ``batch[image_key]``.

    ``t`` is drawn with :func:`medsynth.objectives.sample_timesteps` and the noise with ``torch.randn``,
    both from the loop's generator (so runs and resumes are reproducible). Returns ``{"loss", "flow"}``
    plus ``"ewc"`` when an :class:`EWCTerm` is given (``loss = flow + ewc``).
    """

    image_key: str = "image"
    condition_key: str | None = "masks"
    time_scale: float = 1000.0
    distribution: str = "uniform"
    ewc: EWCTerm | None = None

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        x0 = batch[self.image_key]
        t = sample_timesteps(x0.shape[0], generator, self.distribution, device=x0.device, dtype=x0.dtype)
        x1 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_t = interpolate(x0, x1, t)
        inp = x_t if self.condition_key is None else torch.cat([x_t, batch[self.condition_key].to(x_t.dtype)], dim=1)
        v = call_model(model, inp, t * self.time_scale)
        flow = rectified_flow_loss(v.float(), x0.float(), x1.float())
        terms = {"flow": flow}
        loss = flow
        if self.ewc is not None:
            pen = self.ewc(model)
            terms["ewc"] = pen
            loss = loss + pen
        terms["loss"] = loss
        return terms
