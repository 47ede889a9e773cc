"""Two players trained by one optimizer step of :func:`medsynth.train.train`: the model a stage trains
and a second network (a critic, or a copy of the model).

The loop prepares, checkpoints and steps both; :meth:`PlayerPair.saved_module` names what ``final/``
holds (the first player). Its kinds: the generator's :class:`~medsynth.generator.players.AdversarialPair`
and :class:`~medsynth.generator.distill.DistillationPair`, and the VAE's :class:`~medsynth.vae.step.VAEPair`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PlayerPair", "frozen_call"]


def frozen_call(module: nn.Module, *args):
    """``module(*args)`` with its parameters and buffers detached: the output's gradient reaches the
    inputs but not ``module`` (a critic's term for the other player, in a step that trains both)."""
    state = {k: v.detach() for k, v in (*module.named_parameters(), *module.named_buffers())}
    return torch.func.functional_call(module, state, args)


class PlayerPair(nn.Module):
    """``generator`` and one other named player, registered in that order (the optimizer's order)."""

    def __init__(self, generator: nn.Module, **other: nn.Module):
        super().__init__()
        if len(other) != 1:
            raise TypeError(f"a PlayerPair takes the generator and exactly one other player, got {sorted(other)}")
        self.generator = generator
        for name, module in other.items():
            setattr(self, name, module)

    def saved_module(self) -> nn.Module:
        """What the ``final/`` folder holds: the generator."""
        return self.generator
