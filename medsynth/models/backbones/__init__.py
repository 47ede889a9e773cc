"""Denoising backbones built from a config dict, and one ``predict`` call for all of them.

A backbone config (``model.backbone`` in a study config)::

    type: unet2d_condition | sdxl | sd3 | pixart | flux | medsyn2_dit | maisi_unet3d
    params: {...}        # constructor kwargs of the class below
    pretrained: null     # or a hub id / local folder (from_pretrained); maisi_unet3d also takes a .pt/.safetensors file
    subfolder: ...       # optional; default "unet" (unet2d_condition) / "transformer" (others) for hub repos
    local_files_only: .. # optional; default true when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set

| type | class | papers |
|---|---|---|
| ``unet2d_condition`` | diffusers ``UNet2DConditionModel`` | ViCTr (Stable Diffusion) |
| ``sdxl`` | diffusers ``UNet2DConditionModel`` with ``addition_embed_type: text_time`` | ViCTr (SD-XL) |
| ``sd3`` | diffusers ``SD3Transformer2DModel`` | ViCTr (SD3, MMDiT) |
| ``pixart`` | diffusers ``PixArtTransformer2DModel`` | ViCTr (PixArt-alpha) |
| ``flux`` | diffusers ``FluxTransformer2DModel`` | ViCTr (Flux) |
| ``medsyn2_dit`` | :class:`.medsyn2_dit.MedSyn2DiT` | MedSyn2 |
| ``maisi_unet3d`` | :class:`MaisiBackbone`: MONAI ``DiffusionModelUNetMaisi`` + optional ``ControlNetMaisi`` | MAISI-v2 |

Masks enter by channel concatenation (ViCTr Sec. 3.3 ``[Z_t, Z_s]``, MedSyn2 eq. 1): ``in_channels``
is latent + mask channels and ``out_channels`` the latent channels (Flux: both times 4, its 2x2
packing). MAISI's ControlNet takes a mask through ``control`` as well; ``maisi_unet3d``'s
``params.mask_input`` says where ``predict(..., mask=)`` routes the mask: ``concat`` (default, input
channels only), ``control`` (ControlNet only, MAISI-v2; ``unet_params.in_channels`` = latent channels)
or ``both``.

What a backbone predicts: velocity for every type except a ``medsyn2_dit`` with ``prediction: x0``
(MedSyn2's x-prediction); :func:`predict_velocity` turns either into the velocity the flow losses
and samplers use (``v = (x_t - x0_hat) / max(t, t_min)``, :mod:`medsynth.objectives.x_prediction`).

``pretrained`` loading and input widening: :mod:`.pretrained`. Each type's forward signature (how it
takes time, text, masks and conditions; which hub subfolder; what it predicts) lives in its adapter
module (:mod:`.unet2d_condition`, :mod:`.sdxl`, :mod:`.sd3`, :mod:`.pixart`, :mod:`.flux`, :mod:`.medsyn2_dit`,
:mod:`.maisi_unet3d`; versions: diffusers 0.42.1, MONAI 1.6.1), behind the one interface of
:class:`.adapter.BackboneAdapter`. A new backbone type is one adapter module and one line in
:data:`ADAPTERS`.

:func:`predict` hides each class's forward signature: time ``t`` in [0, 1] (``t = 1`` noise, see
:mod:`medsynth.objectives.rectified_flow`) goes in as each class expects it, text tokens go in as
cross-attention context (plus a pooled vector for SD3/Flux), Flux latents are packed and unpacked.
"""

from __future__ import annotations

import copy

import torch
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..maisi_backbone import MASK_INPUTS, MaisiBackbone
from .adapter import BackboneAdapter, Conditions, as_batch_t, pooled_text
from .flux import FluxAdapter, flux_position_ids, pack_latents, unpack_latents
from .maisi_unet3d import MaisiUNet3DAdapter
from .medsyn2_dit import MedSyn2DiTAdapter
from .pixart import PixArtAdapter
from .pretrained import BackbonePretrainedError, load_pretrained
from .pretrained import expand_input_channels as _expand
from .sd3 import SD3Adapter
from .sdxl import SDXLAdapter
from .unet2d_condition import UNet2DConditionAdapter

__all__ = [
    "ADAPTERS",
    "BACKBONE_TYPES",
    "MASK_INPUTS",
    "BackboneAdapter",
    "BackbonePretrainedError",
    "MaisiBackbone",
    "adapter_for",
    "as_velocity",
    "backbone_type",
    "build_backbone",
    "expand_input_channels",
    "find_adapter",
    "flux_position_ids",
    "input_channels",
    "mask_routing",
    "pack_latents",
    "pooled_text",
    "predict",
    "predict_velocity",
    "predicts_x0",
    "spatial_dims",
    "supports_text_mask",
    "unpack_latents",
]

#: One adapter per backbone ``type``, in the order the docs list them.
ADAPTERS: dict[str, BackboneAdapter] = {
    a.kind: a
    for a in (UNet2DConditionAdapter(), SDXLAdapter(), SD3Adapter(), PixArtAdapter(), FluxAdapter(),
              MedSyn2DiTAdapter(), MaisiUNet3DAdapter())
}
#: The model class of each backbone ``type``.
BACKBONE_TYPES: dict[str, type[ModelMixin]] = {kind: a.model_class for kind, a in ADAPTERS.items()}


def find_adapter(model: nn.Module) -> BackboneAdapter | None:
    """The adapter of a built backbone, ``None`` for a module of no known backbone class."""
    return next((a for a in ADAPTERS.values() if a.matches(model)), None)


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """The adapter of a built backbone (a ``TypeError`` for any other module)."""
    adapter = find_adapter(model)
    if adapter is None:
        raise TypeError(f"{type(model).__name__} is not a known backbone ({', '.join(ADAPTERS)})")
    return adapter


def backbone_type(model: nn.Module) -> str:
    """The config ``type`` of a built backbone."""
    return adapter_for(model).kind


def spatial_dims(cfg_or_model: dict | nn.Module) -> int:
    """2 or 3: the number of spatial dimensions a backbone config / model works on."""
    if isinstance(cfg_or_model, dict):
        return ADAPTERS[cfg_or_model["type"]].config_spatial_dims(cfg_or_model.get("params") or {})
    return adapter_for(cfg_or_model).model_spatial_dims(cfg_or_model)


def supports_text_mask(model: nn.Module) -> bool:
    """Whether ``predict`` can hide padded text tokens from this backbone.

    SD3's joint-attention processor and MONAI's MAISI attention take no mask (padded tokens are
    attended; the text encoder zeroes them), as in their own pipelines.
    """
    return adapter_for(model).takes_text_mask


def input_channels(model: nn.Module) -> int:
    """Channels the backbone's input layer takes (latent + concatenated mask; Flux: packed, 4 per channel)."""
    return adapter_for(model).in_channels(model)


def mask_routing(model: nn.Module) -> tuple[bool, bool]:
    """``(concatenated, control)``: whether ``predict(..., mask=)`` concatenates the mask to the input
    and whether it feeds it to the ControlNet (``maisi_unet3d`` ``params.mask_input``)."""
    return adapter_for(model).mask_routing(model)


def predicts_x0(model: nn.Module) -> bool:
    """Whether the backbone outputs a clean-data estimate (``medsyn2_dit`` with ``prediction: x0``);
    any other module (e.g. a velocity model a test writes) predicts a velocity."""
    adapter = find_adapter(model)
    return adapter is not None and adapter.predicts_x0(model)


def expand_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Widen a backbone's input layer to ``in_channels`` with zero weights for the new channels
    (:func:`.pretrained.expand_input_channels`)."""
    return _expand(adapter_for(model), model, in_channels)


def build_backbone(cfg: dict, key: str = "backbone") -> nn.Module:
    """Build the backbone a config dict describes (see the module docstring); ``key`` names it in errors."""
    kind = cfg.get("type")
    if kind not in ADAPTERS:
        raise ValueError(f"{key}.type = {kind!r}: choose one of {', '.join(ADAPTERS)}")
    adapter = ADAPTERS[kind]
    if cfg.get("pretrained"):
        model = load_pretrained(adapter, cfg, key)
    else:
        try:
            model = adapter.model_class(**copy.deepcopy(cfg.get("params") or {}))  # config must not alias the caller's
        except TypeError as exc:
            raise ValueError(f"{key}.params do not fit {adapter.model_class.__name__}: {exc}") from exc
    if not adapter.matches(model):  # types sharing a class: sdxl is the UNet with the text_time embedding
        found = find_adapter(model)
        raise ValueError(f"{key}.type = {kind!r} but the model built is a {found.kind if found else type(model).__name__} "
                         f"({'set params.addition_embed_type: text_time' if kind == 'sdxl' else 'check type and params'})")
    return model


def predict(
    model: nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    control: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    pooled: torch.Tensor | None = None,
    guidance: float | torch.Tensor = 3.5,
    spacing: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """One backbone evaluation, the same call for every backbone type.

    Args:
        x_t: the model input ``(B, C, *spatial)``: either already ``[z_t; z_m]`` (C = ``in_channels``)
            or just ``z_t`` with the mask latent given as ``mask=`` (concatenated here).
        t: flow time in [0, 1] (``t = 1`` noise), scalar or ``(B,)``.
        text_tokens: ``(B, L, D)`` cross-attention context (D = the backbone's text width).
        text_mask: ``(B, L)``, True/1 for real tokens; ignored where the class takes no mask
            (:func:`supports_text_mask`).
        control: MAISI ControlNet conditioning (mask), ``(B, conditioning_embedding_in_channels, *spatial
            * 2^(len(conditioning_embedding_num_channels)-1))``; only for ``maisi_unet3d``.
        pooled: SD3/Flux pooled text vector ``(B, pooled_projection_dim)``; default: masked mean of
            ``text_tokens`` (needs ``pooled_projection_dim == D``).
        guidance: Flux guidance-distilled models only (``guidance_embeds``).
        spacing: MAISI ``include_spacing_input`` models only, ``(B, 3)`` voxel spacing.

        mask: the condition mask on the latent grid; concatenated to ``x_t`` and/or (``maisi_unet3d``
            with ``params.mask_input`` ``control`` / ``both``, when ``control`` is not given) resized to
            the ControlNet's conditioning grid and passed as ``control``.
        context: input channels that go between ``x_t`` and ``mask`` and are never dropped (Stable Diffusion
            inpainting's ``[inpainting mask; masked-image latent]``, ``generator.inpainting_inputs``):
            the input is ``[x_t; context; mask]``; concatenated backbones only.

    Returns:
        ``(B, out_channels, *spatial)``: whatever the backbone predicts (velocity, or ``x0`` for a
        ``medsyn2_dit`` with ``prediction: x0``), with the latent's channels, not the mask's.
    """
    adapter = adapter_for(model)
    kind = adapter.kind
    concat, as_control = adapter.mask_routing(model) if mask is not None else (True, False)
    if as_control and control is None:
        control = adapter.control_grid(model, mask.to(x_t.dtype), x_t.shape[2:])
    if context is not None and not concat:
        raise ValueError(f"{kind} takes its mask through the ControlNet; inpainting context channels (context=) "
                         "need a backbone that takes its conditions on input channels")
    parts = [x_t, *([] if context is None else [context.to(x_t.dtype)]),
             *([] if mask is None or not concat else [mask.to(x_t.dtype)])]
    x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    want = adapter.in_channels(model)
    per = adapter.features_per_channel
    if x.shape[1] * per != want:
        inputs = ("latent + " + ("inpainting context + " if context is not None else "") + "mask" if concat
                  else "latent; the mask goes to the ControlNet")
        packed = f" (packed: {per} per latent channel)" if per > 1 else ""
        raise ValueError(
            f"{kind} expects {want} input channels{packed} "
            f"({inputs}), got {x.shape[1]}"
        )
    if control is not None and not adapter.takes_control:
        raise ValueError(f"control is only for maisi_unet3d (ControlNet); {kind} takes the mask on channels (mask=)")
    tt = as_batch_t(t, x.shape[0], x.device)
    text = text_tokens.to(x.dtype)
    keep = None if text_mask is None else text_mask.to(device=x.device).bool()
    cond = Conditions(control=control, pooled=pooled, guidance=guidance, spacing=spacing,
                      conditioning_scale=conditioning_scale)
    return adapter.forward(model, x, tt, text, keep, cond)


def predict_velocity(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor | float, text_tokens: torch.Tensor,
                     text_mask: torch.Tensor | None = None, control: torch.Tensor | None = None,
                     **kwargs) -> torch.Tensor:
    """:func:`predict` as a velocity (float32): an x0-predicting backbone's output ``x0_hat`` becomes
    ``(x_t - x0_hat) / max(t, t_min)`` (MedSyn2 eq. 4, :func:`medsynth.objectives.velocity_from_x0`)."""
    return as_velocity(model, predict(model, x_t, t, text_tokens, text_mask, control, **kwargs), x_t, t)


def as_velocity(model: nn.Module, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A :func:`predict` output of ``model`` at ``(x_t, t)`` as a float32 velocity (see :func:`predict_velocity`)."""
    out = out.float()
    if not predicts_x0(model):
        return out
    from medsynth.objectives.x_prediction import velocity_from_x0

    x_t = x_t[:, :out.shape[1]]  # x_t may carry concatenated mask channels
    return velocity_from_x0(out, x_t.float(), as_batch_t(t, x_t.shape[0], x_t.device))
