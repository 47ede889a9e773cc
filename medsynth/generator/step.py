"""One training step of the generator (``loss_step`` of :func:`medsynth.train.train`), and the step a
stage config describes.

:class:`GeneratorStep` draws ``t`` and the noise from the loop's generator, drops text and mask together
with probability ``cond_dropout`` (classifier-free guidance's null condition: empty prompt,
all-background mask), then, independently per sample, the report with probability ``report_dropout``
and the mask with probability ``mask_dropout`` (MedSyn2's four conditioning modes, Sec. 3.3 / Supp. 7.2:
report only, mask only, both, neither; drawn by :func:`medsynth.models.prompts.condition_dropout`). A
dropped report zeroes and masks the report part of the tokens (what a missing report encodes to,
:meth:`medsynth.models.text._PromptCache.encode_compound`); a dropped mask becomes all background
(``ABSENT_MASK_VALUE``) and the prompt its no-mask variant ("no image segmentation is provided"). With
both rates 0 nothing is drawn: the step is exactly what it was. It evaluates the main term of
:mod:`medsynth.generator.objective` and adds its extra terms. :func:`build_step` makes it from a stage
section (``objective``, ``cond_dropout``, ``report_dropout``, ``mask_dropout``, ``timesteps``) and the
extra terms a stage adds (EWC, consistency, contrastive: :func:`contrastive_term`, adversarial).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medsynth.generator.data import LatentData
from medsynth.generator.objective import (
    ExtraTerm,
    FlowMatching,
    NoisePrediction,
    RegionContrastive,
    StepState,
)
from medsynth.generator.players import AdversarialPair
from medsynth.models.prompts import ABSENT_MASK_VALUE, condition_dropout, independent_dropout_probs
from medsynth.objectives import sample_timesteps

__all__ = ["GeneratorStep", "build_step", "contrastive_term", "drop_report_tokens", "roi_contrastive_term"]


def drop_report_tokens(text: torch.Tensor, keep: torch.Tensor, drop: torch.Tensor, start: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text, keep)`` with the report part (tokens ``start:``) zeroed and masked where ``drop`` (``(B,)``
    bool) is True: what :meth:`~medsynth.models.text._PromptCache.encode_compound` gives a missing report."""
    part = torch.zeros(text.shape[1], dtype=torch.bool, device=text.device)
    part[start:] = True
    cut = drop.to(text.device)[:, None] & part[None, :]
    return text.masked_fill(cut[..., None], 0.0), keep & ~cut


@dataclass
class GeneratorStep:
    """``loss_step`` on :class:`LatentData` batches: ``objective`` (a :class:`FlowMatching` or
    :class:`NoisePrediction`) plus ``extras`` (terms of :mod:`medsynth.generator.objective`, added in order).

    ``distribution``: the training-time distribution (``uniform``, ``logit_normal``, or ``one_step``:
    ``t = 1`` only, the distillation into the one-step map ``x0 = x1 - v(x1, 1)``).
    """

    tokens: torch.Tensor
    keep: torch.Tensor
    null_id: int
    objective: FlowMatching | NoisePrediction = field(default_factory=FlowMatching)
    cond_dropout: float = 0.0
    distribution: str = "uniform"
    extras: Sequence[ExtraTerm] = ()
    pooled: torch.Tensor | None = None  # (P + 1, pooled_dim) for SDXL / SD3 / Flux text encoders
    report_dropout: float = 0.0
    mask_dropout: float = 0.0
    report_start: int | None = None  # first token of the report part (LatentData.report_start)
    no_mask: torch.Tensor | None = None  # (P + 1,) the prompts' no-mask variants (LatentData.no_mask)

    def __post_init__(self) -> None:
        if isinstance(self.objective, NoisePrediction) and self.extras:
            raise ValueError("the ddpm objective takes no extra terms (EWC, consistency, contrastive, adversarial)")
        if self.report_dropout > 0 and self.report_start is None:
            raise ValueError("report_dropout > 0 needs prompts with a report part: set generator.report.enabled")
        if self.mask_dropout > 0 and self.no_mask is None:
            raise ValueError("mask_dropout > 0 needs the prompts' no-mask variants (build the data with mask_variants)")

    def _modes(self, pid: torch.Tensor, mask: torch.Tensor, generator: torch.Generator):
        """MedSyn2's four modes: ``(pid, mask, drop_report)`` after independent report / mask drops."""
        probs = independent_dropout_probs(self.report_dropout, self.mask_dropout)
        out, dropped = condition_dropout({"mask": mask}, probs, generator=generator, absent_value=ABSENT_MASK_VALUE)
        drop_mask = dropped["mask"].to(pid.device)
        if self.no_mask is not None:
            pid = torch.where(drop_mask, self.no_mask.to(pid.device)[pid], pid)
        return pid, out["mask"], dropped["report"]

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        pair = model if isinstance(model, AdversarialPair) else None
        if pair is not None:
            model = pair.generator
        x0, mask, pid = batch["latent"], batch["mask"], batch["prompt"]
        b, device = x0.shape[0], x0.device
        if self.distribution == "one_step":
            t = torch.ones(b, device=device, dtype=x0.dtype)
        else:
            t = sample_timesteps(b, generator, self.distribution, device=device, dtype=x0.dtype)
        x1 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(device)
        if "noise" in batch:  # reflow: the noise this latent was generated from (a coupled pair)
            x1 = batch["noise"]
        if self.cond_dropout > 0:
            drop = (torch.rand(b, generator=generator) < self.cond_dropout).to(device)
            pid = torch.where(drop, torch.full_like(pid, self.null_id), pid)
            mask = torch.where(drop.view(-1, *[1] * (mask.ndim - 1)), torch.full_like(mask, ABSENT_MASK_VALUE), mask)
        drop_report = None
        if self.report_dropout > 0 or self.mask_dropout > 0:
            pid, mask, drop_report = self._modes(pid, mask, generator)
        text = self.tokens.to(device)[pid]
        keep = self.keep.to(device)[pid]
        if drop_report is not None and self.report_start is not None:
            text, keep = drop_report_tokens(text, keep, drop_report, self.report_start)
        pooled = None if self.pooled is None else self.pooled.to(device)[pid]
        context = batch.get("context")  # inpainting inputs: never dropped (the image the mask is drawn into)
        inputs = {"pooled": pooled, **({"context": context} if context is not None else {})}
        if isinstance(self.objective, NoisePrediction):
            loss = self.objective(model, x0, mask, text, keep, generator, **inputs)
            return {"ddpm": loss, "loss": loss}
        main, x_t, flow_field = self.objective(model, x0, x1, t, text, keep, mask, **inputs)
        terms = {"flow": main}
        loss = main
        state = StepState(model, pair, self.objective, x0, x1, x_t, t, text, keep, mask, flow_field, step, pooled,
                          context)
        for term in self.extras:
            logged, parts = term(state)
            terms.update(logged)
            for part in parts:
                loss = loss + part
        terms["loss"] = loss
        return terms


def contrastive_term(stage_cfg: Mapping, names: Sequence[str]) -> RegionContrastive | None:
    """MAISI-v2's region contrastive term of a stage section (``contrastive.enabled``), or ``None``."""
    contrastive = stage_cfg["contrastive"]
    if not contrastive["enabled"]:
        return None
    roi = contrastive["roi"]
    if roi not in names:
        raise KeyError(f"contrastive.roi = {roi!r} is not a condition channel ({list(names)})")
    return RegionContrastive(
        roi_channel=list(names).index(roi), delta=float(contrastive["delta"]), dilation=int(contrastive["dilation"]),
        schedule=[tuple(x) for x in contrastive["schedule"]], total_steps=int(stage_cfg["steps"]),
    )


def roi_contrastive_term(cfg: Mapping, names: Sequence[str], total_steps: int) -> RegionContrastive | None:
    """MAISI-v2's region contrastive term of config ``volumes.contrastive`` (several ROI channels, each with
    the channel its voxels join in the perturbed mask), or ``None`` when disabled."""
    if not cfg["enabled"]:
        return None
    names = list(names)
    channels, backgrounds = [], []
    for entry in cfg["rois"]:
        for key in ("roi", "background"):
            if entry.get(key) is not None and entry[key] not in names:
                raise KeyError(f"volumes.contrastive.rois[].{key} = {entry[key]!r} is not a condition channel ({names})")
        channels.append(names.index(entry["roi"]))
        backgrounds.append(names.index(entry["background"]) if entry.get("background") is not None else None)
    if not channels:
        raise ValueError("volumes.contrastive.enabled needs at least one entry in volumes.contrastive.rois")
    return RegionContrastive(roi_channel=channels, delta=float(cfg["delta"]), dilation=int(cfg["dilation"]),
                             schedule=[tuple(x) for x in cfg["schedule"]], total_steps=int(total_steps),
                             background_channel=backgrounds)


def build_step(data: LatentData, stage_cfg: Mapping, ddpm_cfg: Mapping | None = None,
               extras: Sequence[ExtraTerm] = (), adversarial: ExtraTerm | None = None) -> GeneratorStep:
    """The step of a (complete) stage section: its main term (``objective``, ``cond_dropout``,
    ``report_dropout``, ``mask_dropout``, ``timesteps``), then ``extras`` and ``adversarial`` (in that order)."""
    kind = str(stage_cfg["objective"])
    if kind == "ddpm":
        from medsynth.sample import make_scheduler

        objective = NoisePrediction(make_scheduler("ddpm", **dict(ddpm_cfg or {})))
    else:
        objective = FlowMatching(kind)
    terms = list(extras)
    if adversarial is not None:
        terms.append(adversarial)
    return GeneratorStep(data.tokens, data.keep, data.null_id, objective=objective,
                         cond_dropout=float(stage_cfg["cond_dropout"]),
                         distribution=str(stage_cfg["timesteps"]), extras=terms, pooled=data.pooled,
                         report_dropout=float(stage_cfg.get("report_dropout", 0.0)),
                         mask_dropout=float(stage_cfg.get("mask_dropout", 0.0)),
                         report_start=data.report_start, no_mask=data.no_mask)
