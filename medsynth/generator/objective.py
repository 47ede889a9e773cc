"""The generator's training objective: one main term plus a list of extra terms.

Main terms (what the backbone regresses):

* :class:`FlowMatching` - ``flow``: rectified-flow velocity loss (ViCTr eq. 1); ``tweedie``: the
  Tweedie-corrected field ``u = v - (1 - abar) s`` (ViCTr Sec. 3.2). An x0-predicting backbone
  (``medsyn2_dit`` with ``prediction: x0``) trains under ``flow`` with MedSyn2's x-prediction v-loss
  (eq. 4, :func:`medsynth.objectives.x_prediction_v_loss`, logged as ``flow``); every field it hands on
  (Tweedie, consistency, contrastive, adversarial) is its implied velocity.
* :class:`NoisePrediction` - ``ddpm``: epsilon-prediction on a DDPM schedule (MedDiff-FT's baseline);
  it takes no extra terms.

Extra terms, each a small class called with the :class:`StepState` of the main term, returning the
values it logs and the contributions it adds to the loss (in order):

* :class:`EWCPenalty` - ViCTr stage 1's elastic weight consolidation.
* :class:`ConsistencyTerms` - ViCTr stage 2's temporal (``MSE(u, v_ref)``) and spatial (one Euler step
  ``Z_{t-dt}`` of each, values + spatial gradients) consistency against the frozen stage-1 model; both
  compare the fields the samplers integrate (``u`` of the adapted model, the plain velocity of the
  reference).
* :class:`RegionContrastive` - MAISI-v2's ROI contrastive term: the same ``x_t`` with the ROI channel
  removed from the mask (ROI -> surroundings) must give a different field inside the ROI.
* :class:`AdversarialTerm` - a latent patch discriminator's term (the model is an
  :class:`~medsynth.generator.players.AdversarialPair`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from medsynth.generator.players import AdversarialPair
from medsynth.models.backbones import as_velocity, predict, predicts_x0
from medsynth.models.prompts import ABSENT_MASK_VALUE
from medsynth.objectives import (
    euler_step,
    interpolate,
    rectified_flow_loss,
    spatial_consistency_loss,
    temporal_consistency_loss,
    tweedie_corrected_velocity,
    velocity_from_x0,
    x_prediction_v_loss,
)
from medsynth.train import EWCTerm

__all__ = [
    "FLOW_OBJECTIVES",
    "AdversarialTerm",
    "ConsistencyTerms",
    "EWCPenalty",
    "ExtraTerm",
    "FlowMatching",
    "NoisePrediction",
    "RegionContrastive",
    "StepState",
]

#: the main terms of :class:`FlowMatching`
FLOW_OBJECTIVES = ("flow", "tweedie")


@dataclass(frozen=True)
class FlowMatching:
    """Main term on the flow path ``x_t = (1 - t) x0 + t x1`` (module docstring)."""

    kind: str = "flow"
    abar_mapping: str = "variance"
    detach_score: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FLOW_OBJECTIVES:
            raise ValueError(f"objective must be 'flow', 'tweedie' or 'ddpm', got {self.kind!r}")

    def field(self, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The field a sampler integrates, from the model's velocity ``v``."""
        if self.kind == "tweedie":
            return tweedie_corrected_velocity(v, x_t.float(), t.float(), detach_score=self.detach_score,
                                              mapping=self.abar_mapping)
        return v

    def __call__(self, model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                 keep: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor | None = None,
                 context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, x_t, field)`` of one batch; ``context``: the inpainting input channels, if any."""
        x_t = interpolate(x0, x1, t)
        if predicts_x0(model) and self.kind == "flow":  # MedSyn2 eq. 4: x-prediction, v-loss
            x0_hat = predict(model, x_t, t, text, keep, mask=mask, context=context, pooled=pooled).float()
            field = velocity_from_x0(x0_hat, x_t.float(), t.float())
            return x_prediction_v_loss(x0_hat, x0.float(), x1.float(), t.float()), x_t, field
        out = predict(model, x_t, t, text, keep, mask=mask, context=context, pooled=pooled)
        field = self.field(as_velocity(model, out, x_t, t), x_t, t)
        return rectified_flow_loss(field, x0.float(), x1.float()), x_t, field


@dataclass(frozen=True)
class NoisePrediction:
    """Main term ``ddpm``: noise prediction with the DDPM ``scheduler`` (a diffusers ``DDPMScheduler``)."""

    scheduler: object

    def __call__(self, model: nn.Module, x0: torch.Tensor, mask: torch.Tensor, text: torch.Tensor,
                 keep: torch.Tensor, generator: torch.Generator, pooled: torch.Tensor | None = None,
                 context: torch.Tensor | None = None) -> torch.Tensor:
        from medsynth.objectives import ddpm_add_noise, ddpm_model_time, noise_prediction_loss, sample_ddpm_timesteps

        steps = int(self.scheduler.config.num_train_timesteps)
        timesteps = sample_ddpm_timesteps(x0.shape[0], generator, steps)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_t = ddpm_add_noise(x0, noise, timesteps.to(x0.device), self.scheduler)
        if predicts_x0(model):
            raise ValueError("the ddpm objective trains noise prediction: an x0-predicting backbone "
                             "(medsyn2_dit prediction: x0) needs objective flow (MedSyn2 x-prediction v-loss)")
        eps = predict(model, x_t, ddpm_model_time(timesteps, steps).to(x0.device), text, keep, mask=mask,
                      context=context, pooled=pooled).float()
        return noise_prediction_loss(eps, noise.float())


@dataclass
class StepState:
    """What the main term of one step computed, for the extra terms."""

    model: nn.Module  # the generator (a pair's generator)
    pair: AdversarialPair | None
    objective: FlowMatching
    x0: torch.Tensor
    x1: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor
    text: torch.Tensor
    keep: torch.Tensor
    mask: torch.Tensor
    field: torch.Tensor
    step: int
    pooled: torch.Tensor | None = None
    context: torch.Tensor | None = None  # the inpainting input channels (generator.inpainting_inputs)


class ExtraTerm(Protocol):
    """An extra term: ``(logged values, loss contributions added in order)`` of one step."""

    def __call__(self, s: StepState) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]: ...


@dataclass
class EWCPenalty:
    """ViCTr stage 1: ``lam/2 sum F (theta - theta*)^2`` (:class:`medsynth.train.EWCTerm`)."""

    ewc: EWCTerm

    def __call__(self, s: StepState) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        value = self.ewc(s.model)
        return {"ewc": value}, [value]


@dataclass
class ConsistencyTerms:
    """ViCTr stage 2's temporal and spatial consistency against the frozen ``reference``."""

    reference: nn.Module
    temporal_weight: float = 0.0
    spatial_weight: float = 0.0
    grad_weight: float = 1.0
    step_size: float = 0.1

    def __call__(self, s: StepState) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        if not (self.temporal_weight or self.spatial_weight):
            return {}, []
        with torch.no_grad():
            v_ref = as_velocity(self.reference, predict(self.reference, s.x_t, s.t, s.text, s.keep, mask=s.mask,
                                                          context=s.context, pooled=s.pooled),
                                s.x_t, s.t)
        logged, parts = {}, []
        if self.temporal_weight:
            logged["temporal"] = temporal_consistency_loss(s.field, v_ref)
            parts.append(self.temporal_weight * logged["temporal"])
        if self.spatial_weight:
            t_prev = (s.t - self.step_size).clamp_min(0.0)
            logged["spatial"] = spatial_consistency_loss(euler_step(s.x_t.float(), s.field, s.t, t_prev),
                                                         euler_step(s.x_t.float(), v_ref, s.t, t_prev), self.grad_weight)
            parts.append(self.spatial_weight * logged["spatial"])
        return logged, parts


@dataclass
class RegionContrastive:
    """MAISI-v2's region contrastive term on condition channel ``roi_channel`` (or on the union of several:
    a sequence); its weight follows ``schedule`` (``(percent of training, weight)`` steps,
    :func:`medsynth.objectives.contrastive_lambda`) over ``total_steps``. The perturbed mask has each ROI
    channel removed; where ``background_channel`` names a channel for an ROI (one entry per ROI, ``None``:
    none), the ROI's voxels join that channel instead ([P]: "pancreatic tumor label -> pancreas label")."""

    roi_channel: int | Sequence[int]
    delta: float
    dilation: int
    schedule: Sequence[tuple[float, float]]
    total_steps: int
    background_channel: Sequence[int | None] | None = None

    def __call__(self, s: StepState) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        from medsynth.objectives import contrastive_lambda, region_contrastive_loss

        rois = self.roi_channel
        channels = [int(rois)] if isinstance(rois, int) else [int(c) for c in rois]
        backgrounds = list(self.background_channel or [None] * len(channels))
        roi = (s.mask[:, channels] > 0).any(dim=1, keepdim=True).float()
        perturbed = s.mask.clone()
        for channel, background in zip(channels, backgrounds):
            if background is not None:
                perturbed[:, background] = torch.maximum(perturbed[:, background], s.mask[:, channel])
            perturbed[:, channel] = ABSENT_MASK_VALUE
        other = as_velocity(s.model, predict(s.model, s.x_t, s.t, s.text, s.keep, mask=perturbed, context=s.context,
                                                 pooled=s.pooled), s.x_t, s.t)
        other = s.objective.field(other, s.x_t, s.t)
        term = region_contrastive_loss(s.field, other, roi, delta=float(self.delta), dilation=int(self.dilation))
        weight = contrastive_lambda(int(s.step * 100 / max(1, self.total_steps)), self.schedule)
        logged = {"contrastive": term.total, "contrastive_roi_distance": term.d_roi.mean().detach(),
                  "contrastive_weight": torch.tensor(weight)}
        return logged, [logged["contrastive_weight"] * logged["contrastive"]]


@dataclass
class AdversarialTerm:
    """The generator's adversarial term (times ``weight``) and the discriminator's loss of an
    :class:`AdversarialPair`, on the clean latent the field implies."""

    weight: float

    def __call__(self, s: StepState) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        from medsynth.objectives import x0_from_velocity

        if s.pair is None:
            raise TypeError("the adversarial term trains an AdversarialPair (generator + discriminator)")
        adv = s.pair.adversarial_terms(s.x0.float(), x0_from_velocity(s.field, s.x_t.float(), s.t.float()),
                                       s.mask.float())
        return adv, [self.weight * adv["adversarial"], adv["discriminator"]]
