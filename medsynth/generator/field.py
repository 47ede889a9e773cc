"""The conditioned field of one batch of conditions, with classifier-free guidance: the only place it is written.

``v = v_u + w (v_c - v_u)`` (Ho & Salimans 2022): the conditional and the null condition (empty prompt,
all-background mask: the training-time dropout) are evaluated in one batched pass. Sampling, reflow,
the HU quality check and the DMD teacher all guide through :class:`ConditionedField`.
"""

from __future__ import annotations

import torch
from torch import nn

from medsynth.models.backbones import as_velocity, predict
from medsynth.models.prompts import ABSENT_MASK_VALUE

__all__ = ["ConditionedField"]


class ConditionedField:
    """``field(x, t)`` of one batch of conditions, with classifier-free guidance batched in one pass.

    ``corrected``: integrate the Tweedie-corrected field (``mapping`` of the time to ``abar``) instead of
    the raw one; :meth:`raw` is always the guided network output. ``context``: the inpainting input
    channels (``[inpainting mask; masked-image latent]``), the same in the conditional and the null half.
    """

    def __init__(self, model: nn.Module, mask: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor,
                 null_tokens: torch.Tensor, null_keep: torch.Tensor, guidance: float, corrected: bool = False,
                 mapping: str = "variance", pooled: torch.Tensor | None = None,
                 null_pooled: torch.Tensor | None = None, context: torch.Tensor | None = None):
        self.model, self.guidance, self.corrected, self.mapping = model, guidance, corrected, mapping
        b = mask.shape[0]
        # inpainting inputs (generator.inpainting_inputs) are in both halves, as the diffusers inpainting
        # pipeline guides: only the prompt and the condition masks make the null condition
        self.context = context
        if guidance != 1.0:
            self.context = None if context is None else torch.cat([context, context])
            self.mask = torch.cat([mask, torch.full_like(mask, ABSENT_MASK_VALUE)])
            self.tokens = torch.cat([tokens, null_tokens.expand(b, *null_tokens.shape[1:])])
            self.keep = torch.cat([keep, null_keep.expand(b, *null_keep.shape[1:])])
            self.pooled = None if pooled is None else torch.cat([pooled, null_pooled.expand(b, -1)])
        else:
            self.mask, self.tokens, self.keep, self.pooled = mask, tokens, keep, pooled

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided network output (velocity, or noise for a ddpm model) at ``x``, per-sample ``t``.

        An x0-predicting backbone's output is turned into its implied velocity
        (:func:`medsynth.models.backbones.as_velocity`).
        """
        if self.guidance == 1.0:
            return as_velocity(self.model, self._predict(x, t), x, t)
        xx, tt = torch.cat([x, x]), torch.cat([t, t])
        out = as_velocity(self.model, self._predict(xx, tt), xx, tt)
        cond, uncond = out.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def _predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return predict(self.model, x, t, self.tokens, self.keep, mask=self.mask, context=self.context,
                       pooled=self.pooled)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = self.raw(x, t)
        if self.corrected:
            from medsynth.objectives import tweedie_corrected_velocity

            return tweedie_corrected_velocity(v, x, t, mapping=self.mapping)
        return v
