"""Stage-2 distillation to a one-step generator: ViCTr Table 4's "Distribution Matching Distillation".

The ``dmd`` variant trains, in one :func:`medsynth.train.train` run,

* the **generator** ``G``: the stage-2 starting model with the variant's LoRA adapters (or all weights
  with ``method: full``), sampled in one step ``x_g = z - v_G(z, 1)``;
* the **fake score** model: a full copy of the starting model, trained with the rectified-flow loss on
  the generator's (detached) samples, so it tracks the generator's distribution;

against the frozen **teacher** (the starting model itself, with classifier-free guidance
``dmd.guidance_scale`` on its field, as DMD guides the real score). Per step:
``loss = L_dm + regression_weight * L_reg + fake_weight * L_fake`` (:mod:`medsynth.objectives.dmd`).
The gradients of the three terms reach disjoint parameters (``L_dm``/``L_reg`` only the generator,
``L_fake`` only the fake model), so one AdamW step updates both players at once: DMD's alternating
updates with a shared step counter. The regression pairs are the teacher's own multi-step samples from
fixed noise (``dmd.pairs``, as for reflow). Both players sit in one :class:`DistillationPair` module,
so checkpoints hold both and resume bit-for-bit; the final folder holds the generator only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from medsynth.generator.field import ConditionedField
from medsynth.generator.players import PlayerPair
from medsynth.models.backbones import as_velocity, predict
from medsynth.objectives import (
    distribution_matching_loss,
    interpolate,
    one_step_sample,
    rectified_flow_loss,
    regression_loss,
    sample_timesteps,
    x0_from_velocity,
)

__all__ = ["DistillationPair", "DistributionMatchingStep"]


class DistillationPair(PlayerPair):
    """The two trained players of DMD: the one-step generator (saved as ``final/``) and the fake score."""

    def __init__(self, generator: nn.Module, fake: nn.Module):
        super().__init__(generator, fake=fake)

    def forward(self, which: str, *args, **kwargs) -> torch.Tensor:
        """``predict`` of one player (``"generator"`` or ``"fake"``) as a velocity; one entry point for DDP."""
        model = getattr(self, which)
        return as_velocity(model, predict(model, *args, **kwargs), args[0], args[1])


@dataclass
class DistributionMatchingStep:
    """``loss_step`` of the ``dmd`` variant on reflow-style ``(latent, noise)`` pairs (module docstring).

    ``batch["noise"]`` is the noise ``z`` and ``batch["latent"]`` the teacher's sample from it.
    ``t_range``: times of the noised copy the two scores are compared at (DMD avoids the ends).
    """

    tokens: torch.Tensor
    keep: torch.Tensor
    null_id: int
    teacher: nn.Module
    guidance_scale: float = 2.0
    regression_weight: float = 0.25
    fake_weight: float = 1.0
    t_range: tuple[float, float] = (0.02, 0.98)
    pooled: torch.Tensor | None = None  # (P + 1, pooled_dim) for SDXL / SD3 / Flux text encoders

    def _teacher_x0(self, x_t: torch.Tensor, t: torch.Tensor, text, keep, mask, pooled=None) -> torch.Tensor:
        teacher = self.teacher.to(x_t.device)
        nid = slice(self.null_id, self.null_id + 1)
        field = ConditionedField(teacher, mask, text, keep, self.tokens.to(x_t.device)[nid],
                                 self.keep.to(x_t.device)[nid], self.guidance_scale, pooled=pooled,
                                 null_pooled=None if pooled is None else self.pooled.to(x_t.device)[nid])
        return x0_from_velocity(field.raw(x_t, t), x_t.float(), t.float())

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        if "noise" not in batch:
            raise KeyError("the dmd step needs (noise, teacher sample) pairs: batch['noise'] is missing")
        if "context" in batch:
            raise ValueError("dmd distillation does not take inpainting inputs (generator.inpainting_inputs)")
        z, x_teacher, mask, pid = batch["noise"], batch["latent"], batch["mask"], batch["prompt"]
        b, device = z.shape[0], z.device
        text, keep = self.tokens.to(device)[pid], self.keep.to(device)[pid]
        pooled = None if self.pooled is None else self.pooled.to(device)[pid]
        ones = torch.ones(b, device=device, dtype=z.dtype)
        x_gen = one_step_sample(model("generator", z, ones, text, keep, mask=mask, pooled=pooled).float(), z.float())
        reg = regression_loss(x_gen, x_teacher.float())

        t = sample_timesteps(b, generator, "uniform", t_min=self.t_range[0], t_max=self.t_range[1],
                             device=device, dtype=z.dtype)
        eps = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(device)
        x_t = interpolate(x_gen.detach(), eps, t)
        v_fake = model("fake", x_t, t, text, keep, mask=mask, pooled=pooled).float()
        fake = rectified_flow_loss(v_fake, x_gen.detach(), eps.float())  # the fake score learns G's samples
        with torch.no_grad():
            x0_real = self._teacher_x0(x_t, t, text, keep, mask, pooled)
            x0_fake = x0_from_velocity(v_fake.detach(), x_t.float(), t.float())
        dm = distribution_matching_loss(x_gen, x0_real, x0_fake)
        loss = dm + self.regression_weight * reg + self.fake_weight * fake
        return {"dm": dm, "regression": reg, "fake_flow": fake,
                "dm_gap": (x0_fake - x0_real).pow(2).mean().detach(), "loss": loss}
