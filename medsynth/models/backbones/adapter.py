"""What every backbone adapter answers: the one interface :func:`~medsynth.models.backbones.predict` and
:func:`~medsynth.models.backbones.build_backbone` talk to.

An adapter holds the facts about one backbone ``type`` that used to be spread over switches: its model
class, the hub subfolder it lives in, the layer that sees the input channels, how many spatial
dimensions it works on, whether it can hide padded text tokens, where a mask goes, what it predicts,
and how its forward pass takes time, text and conditions. Adapters hold no state; one instance per
type is registered in :data:`medsynth.models.backbones.ADAPTERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["BackboneAdapter", "Conditions", "as_batch_t", "pooled_text", "resolve_pooled"]


@dataclass(frozen=True)
class Conditions:
    """The optional inputs of one ``predict`` call beyond ``(x, t, text, text_mask)`` (see ``predict``)."""

    control: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    guidance: float | torch.Tensor = 3.5
    spacing: torch.Tensor | None = None
    conditioning_scale: float = 1.0


class BackboneAdapter:
    """One backbone type: subclasses set the class attributes and override :meth:`forward`."""

    #: the config ``type`` this adapter serves
    kind: str = ""
    #: the model class (diffusers ``ModelMixin``) built from ``params`` / loaded with ``from_pretrained``
    model_class: type[ModelMixin]
    #: the subfolder of a hub repository (a full pipeline) the model lives in; ``None``: the repo root
    default_subfolder: str | None = None
    #: dotted paths of the layers whose weights ``(out, in, ...)`` see the input channels
    input_layers: tuple[str, ...] = ()
    #: input features per latent channel (Flux packs 2x2 patches: 4)
    features_per_channel: int = 1
    #: whether the forward pass can hide padded text tokens (a text mask)
    takes_text_mask: bool = True
    #: whether the forward pass takes a ControlNet conditioning (``control=``)
    takes_control: bool = False

    def matches(self, model: nn.Module) -> bool:
        """Whether a built ``model`` is of this type (its class, unless a type shares one: see sdxl)."""
        return isinstance(model, self.model_class)

    def config_spatial_dims(self, params: dict) -> int:
        """Spatial dimensions of a backbone built from ``params`` (2 unless overridden)."""
        return 2

    def model_spatial_dims(self, model: nn.Module) -> int:
        """Spatial dimensions of a built backbone (2 unless overridden)."""
        return 2

    def in_channels(self, model: nn.Module) -> int:
        """Channels the input layer takes, as the model's config records them."""
        return int(model.config.in_channels)

    def record_in_channels(self, model: nn.Module, in_channels: int) -> None:
        """Write a widened input to the model config (so ``save_pretrained`` records it); an ``out_channels:
        null`` (Flux, PixArt: "as many as in") is pinned to the output the model has, so a reload keeps it."""
        if "out_channels" in model.config and model.config.get("out_channels") is None:
            model.register_to_config(out_channels=int(getattr(model, "out_channels", self.in_channels(model))))
        model.register_to_config(in_channels=in_channels)

    def split_in_channels(self, params: dict) -> tuple[dict, int | None]:
        """``params`` without ``in_channels``, and the ``in_channels`` asked for (``None``: not given)."""
        params = dict(params)
        return params, params.pop("in_channels", None)

    def pretrained_value(self, have: Any, want: Any) -> Any:
        """The part of a loaded config value ``have`` to compare with the asked-for ``want``."""
        return have

    def narrow_output(self, model: nn.Module, out_channels: int) -> bool:
        """Keep only the first ``out_channels`` outputs of a loaded model whose head predicts more (PixArt's
        learned variance); ``False``: this type cannot, and ``params.out_channels`` must match the checkpoint."""
        return False

    def load_release_file(self, path: str, params: dict, cfg: dict) -> nn.Module | None:
        """A model from a single weights file (not a diffusers folder; ``cfg``: the backbone config, for files
        beside it); ``None``: this type has no such format. Its ``params`` are then checked and its input
        widened like a loaded folder's."""
        return None

    def mask_routing(self, model: nn.Module) -> tuple[bool, bool]:
        """``(concatenated, control)``: where a ``predict(..., mask=)`` goes."""
        return True, False

    def control_grid(self, model: nn.Module, mask: torch.Tensor, latent_spatial) -> torch.Tensor:
        """The mask on the ControlNet's conditioning grid (only adapters with ``takes_control``)."""
        raise ValueError(f"{self.kind} has no ControlNet")

    def predicts_x0(self, model: nn.Module) -> bool:
        """Whether the output is a clean-data estimate rather than a velocity."""
        return False

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None, cond: Conditions) -> torch.Tensor:
        """One evaluation: ``x`` is the full input ``(B, in_channels, *spatial)``, ``t`` flow time ``(B,)``
        in [0, 1], ``text`` ``(B, L, D)`` in ``x``'s dtype, ``keep`` ``(B, L)`` bool or ``None``."""
        raise NotImplementedError


def as_batch_t(t: torch.Tensor | float, b: int, device, dtype=torch.float32) -> torch.Tensor:
    """A scalar or ``(B,)`` time as a ``(B,)`` tensor."""
    t = torch.as_tensor(t, device=device, dtype=dtype).reshape(-1)
    if t.numel() == 1:
        return t.expand(b)
    if t.numel() != b:
        raise ValueError(f"t has {t.numel()} values for a batch of {b}")
    return t


def pooled_text(text_tokens: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked mean of text tokens ``(B, L, D) -> (B, D)``: the pooled vector SD3/Flux want when none is given."""
    if text_mask is None:
        return text_tokens.mean(dim=1)
    w = text_mask.to(text_tokens.dtype)[..., None]
    return (text_tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


def resolve_pooled(kind: str, model: nn.Module, text: torch.Tensor, keep: torch.Tensor | None,
                   pooled: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """The pooled text vector for SD3 / Flux / SDXL: the given one, or the masked mean of the tokens, checked
    against ``dim`` (default: the model's ``pooled_projection_dim``)."""
    if pooled is None:
        pooled = pooled_text(text, keep)
    want = int(dim if dim is not None else model.config.pooled_projection_dim)
    if pooled.shape[-1] != want:
        raise ValueError(
            f"{kind}: the model takes a {want}-feature pooled text vector but it has {pooled.shape[-1]}; pass "
            "pooled= (e.g. CLIP's pooled output) or size the pooled projection to the text width"
        )
    return pooled.to(text.dtype)
