"""Denoising backbones built from a config dict, and one ``predict`` call for all of them.

A backbone config (``model.backbone`` in a study config)::

    type: unet2d_condition | sd3 | pixart | flux | medsyn2_dit | maisi_unet3d
    params: {...}        # constructor kwargs of the class below
    pretrained: null     # or a hub id / local folder (from_pretrained); maisi_unet3d also takes a .pt/.safetensors file
    subfolder: ...       # optional; default "unet" (unet2d_condition) / "transformer" (others) for hub repos
    local_files_only: .. # optional; default true when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set

| type | class | papers |
|---|---|---|
| ``unet2d_condition`` | diffusers ``UNet2DConditionModel`` | ViCTr (Stable Diffusion) |
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

With ``pretrained`` set and ``params.in_channels`` larger than the checkpoint's, the input layer is
widened with zero weights for the extra (mask) channels, so the loaded model's output is unchanged
until those weights train (the InstructPix2Pix recipe). Any other ``params`` must agree with the
checkpoint's config.

:func:`predict` hides each class's forward signature: time ``t`` in [0, 1] (``t = 1`` noise, see
:mod:`medsynth.objectives.rectified_flow`) goes in as each class expects it, text tokens go in as
cross-attention context (plus a pooled vector for SD3/Flux), Flux latents are packed and unpacked.
Per class (diffusers 0.42.1, MONAI 1.6.1):

* UNet2DConditionModel: timestep ``t * 1000``; ``encoder_attention_mask`` (turned into a bias inside).
* SD3Transformer2DModel: timestep ``t * 1000``; needs ``pooled_projections`` (default here: masked mean
  of the tokens); its joint-attention processor takes no text mask; positions are cropped from a
  ``pos_embed_max_size`` grid, which must cover ``H / patch_size``.
* PixArtTransformer2DModel: ``out_channels`` defaults to 8 (learned sigma), so set it; text goes through
  ``caption_channels -> inner dim``, so ``cross_attention_dim`` must equal heads x head dim;
  ``sample_size == 128`` switches on resolution/aspect-ratio embeddings (then inner dim % 3 == 0; we
  pass the size of an 8x VAE's image); timestep ``t * 1000``; ``encoder_attention_mask``.
* FluxTransformer2DModel: tokens are 2x2-packed latents (``in_channels`` = 4 x channels, ``patch_size``
  1); 2-d ``img_ids`` (0, row, col) and ``txt_ids`` (zeros); timestep (and ``guidance``) in [0, 1],
  multiplied by 1000 inside; the text mask goes in as ``joint_attention_kwargs["attention_mask"]``
  over the joint ``[text; image]`` sequence; ``sum(axes_dims_rope) == attention_head_dim``.
* MAISI (MONAI): plain ``nn.Module``s, wrapped in :class:`MaisiBackbone` for save/from_pretrained;
  timesteps on ``RFlowScheduler``'s scale (``t * 1000``, same direction as ours); ``context`` only when
  ``with_conditioning``; no text mask.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .medsyn2_dit import MedSyn2DiT

__all__ = [
    "BACKBONE_TYPES",
    "BackbonePretrainedError",
    "MaisiBackbone",
    "build_backbone",
    "backbone_type",
    "spatial_dims",
    "supports_text_mask",
    "input_channels",
    "mask_routing",
    "predicts_x0",
    "predict_velocity",
    "as_velocity",
    "expand_input_channels",
    "pooled_text",
    "pack_latents",
    "unpack_latents",
    "flux_position_ids",
    "predict",
]


class BackbonePretrainedError(RuntimeError):
    """A ``pretrained`` backbone could not be loaded (offline, missing, or not matching ``params``)."""


#: Where ``predict(..., mask=)`` sends the mask of a ``maisi_unet3d`` (``params.mask_input``).
MASK_INPUTS = ("concat", "control", "both")

_UNET_SHARED_WITH_CONTROLNET = (
    "spatial_dims", "in_channels", "num_res_blocks", "num_channels", "attention_levels", "norm_num_groups",
    "norm_eps", "resblock_updown", "num_head_channels", "with_conditioning", "transformer_num_layers",
    "cross_attention_dim", "num_class_embeds", "upcast_attention", "include_fc", "use_combined_linear",
    "use_flash_attention",
)


class MaisiBackbone(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """MAISI's 3D diffusion UNet with an optional ControlNet, as one diffusers model (save/from_pretrained).

    ``unet_params``: kwargs of MONAI's ``DiffusionModelUNetMaisi``. ``controlnet_params``: ``None`` or kwargs
    of ``ControlNetMaisi`` that differ from the UNet's (at least ``conditioning_embedding_in_channels`` and
    ``conditioning_embedding_num_channels``; the shared architecture kwargs are taken from ``unet_params``).
    (Not named ``unet``/``controlnet``: diffusers resolves config names before submodule names.)
    As in MAISI's training scripts the ControlNet starts as a copy of the UNet's encoder
    (``controlnet_from_unet``); its output convolutions start at zero (MONAI), so it has no effect until
    trained. ``forward`` takes timesteps on MONAI's ``RFlowScheduler`` scale (``t * 1000``).
    ``mask_input``: where :func:`predict` puts a ``mask=``: ``concat`` (input channels), ``control``
    (the ControlNet's conditioning only) or ``both``.
    """

    @register_to_config
    def __init__(self, unet_params: dict, controlnet_params: dict | None = None, controlnet_from_unet: bool = True,
                 mask_input: str = "concat"):
        super().__init__()
        if mask_input not in MASK_INPUTS:
            raise ValueError(f"maisi_unet3d mask_input must be one of {MASK_INPUTS}, got {mask_input!r}")
        if mask_input != "concat" and controlnet_params is None:
            raise ValueError(f"maisi_unet3d mask_input {mask_input!r} needs a ControlNet (controlnet_params)")
        from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
        from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

        self.unet = DiffusionModelUNetMaisi(**unet_params)
        self.controlnet = None
        if controlnet_params is not None:
            shared = {k: unet_params[k] for k in _UNET_SHARED_WITH_CONTROLNET if k in unet_params}
            kwargs = shared | dict(controlnet_params)
            self.controlnet = ControlNetMaisi(**kwargs)
            if controlnet_from_unet and not any(p.is_meta for p in self.unet.parameters()):
                own = self.controlnet.state_dict()
                self.controlnet.load_state_dict(
                    {k: v for k, v in self.unet.state_dict().items() if k in own and own[k].shape == v.shape},
                    strict=False,
                )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        control: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        spacing: torch.Tensor | None = None,
        top_region_index: torch.Tensor | None = None,
        bottom_region_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        down = mid = None
        if control is not None:
            if self.controlnet is None:
                raise ValueError("control was given but this maisi_unet3d has no ControlNet (params.controlnet_params: null)")
            down, mid = self.controlnet(
                x, timesteps, control, conditioning_scale=conditioning_scale, context=context, class_labels=class_labels
            )
        if down is None:
            return self.unet(
                x, timesteps, context=context, class_labels=class_labels,
                top_region_index_tensor=top_region_index, bottom_region_index_tensor=bottom_region_index,
                spacing_tensor=spacing,
            )
        # DiffusionModelUNetMaisi.forward with the ControlNet residuals added out of place: MONAI adds them
        # in place (``+=``) to tensors the next layers saved for backward, which breaks training. Same
        # values: where the deepest skip tensor *is* the middle block's input (no downsampler on the last
        # level), MONAI's in-place add reaches the middle block too, and so does it here.
        unet = self.unet
        emb = unet._get_time_and_class_embedding(x, timesteps, class_labels)
        emb = unet._get_input_embeddings(emb, top_region_index, bottom_region_index, spacing)
        h, skips = unet._apply_down_blocks(unet.conv_in(x), emb, context, None)
        added = [s + r for s, r in zip(skips, down)]
        h = next((a for s, a in zip(skips, added) if s is h), h)
        h = unet.middle_block(h, emb, context) + mid
        skips = added
        return unet.out(unet._apply_up_blocks(h, emb, context, skips))


BACKBONE_TYPES: dict[str, type[ModelMixin]] = {
    "unet2d_condition": UNet2DConditionModel,
    "sd3": SD3Transformer2DModel,
    "pixart": PixArtTransformer2DModel,
    "flux": FluxTransformer2DModel,
    "medsyn2_dit": MedSyn2DiT,
    "maisi_unet3d": MaisiBackbone,
}
_DEFAULT_SUBFOLDER = {"unet2d_condition": "unet", "sd3": "transformer", "pixart": "transformer", "flux": "transformer"}
# The layer that sees the input channels, per type (weights of shape (out, in, ...)).
_INPUT_LAYERS = {
    "unet2d_condition": ("conv_in",),
    "sd3": ("pos_embed.proj",),
    "pixart": ("pos_embed.proj",),
    "flux": ("x_embedder",),
    "medsyn2_dit": ("x_embedder",),
    "maisi_unet3d": ("unet.conv_in.conv", "controlnet.conv_in.conv"),
}

# ----------------------------------------------------------------------------------------------------------
def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def backbone_type(model: nn.Module) -> str:
    """The config ``type`` of a built backbone."""
    for name, cls in BACKBONE_TYPES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"{type(model).__name__} is not a known backbone ({', '.join(BACKBONE_TYPES)})")


def spatial_dims(cfg_or_model: dict | nn.Module) -> int:
    """2 or 3: the number of spatial dimensions a backbone config / model works on."""
    if isinstance(cfg_or_model, dict):
        kind, params = cfg_or_model["type"], cfg_or_model.get("params") or {}
        if kind == "medsyn2_dit":
            return int(params.get("spatial_dims", 3))
        return 3 if kind == "maisi_unet3d" else 2
    if isinstance(cfg_or_model, MedSyn2DiT):
        return int(cfg_or_model.config.spatial_dims)
    return 3 if isinstance(cfg_or_model, MaisiBackbone) else 2


def supports_text_mask(model: nn.Module) -> bool:
    """Whether ``predict`` can hide padded text tokens from this backbone.

    SD3's joint-attention processor and MONAI's MAISI attention take no mask (padded tokens are
    attended; the text encoder zeroes them), as in their own pipelines.
    """
    return not isinstance(model, (SD3Transformer2DModel, MaisiBackbone))


def _get_module(model: nn.Module, path: str) -> nn.Module | None:
    mod = model
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod


def _in_channels(model: nn.Module) -> int:
    if isinstance(model, MaisiBackbone):
        return int(model.config.unet_params["in_channels"])
    return int(model.config.in_channels)


def input_channels(model: nn.Module) -> int:
    """Channels the backbone's input layer takes (latent + concatenated mask; Flux: packed, 4 per channel)."""
    return _in_channels(model)


def mask_routing(model: nn.Module) -> tuple[bool, bool]:
    """``(concatenated, control)``: whether ``predict(..., mask=)`` concatenates the mask to the input
    and whether it feeds it to the ControlNet (``maisi_unet3d`` ``params.mask_input``)."""
    if isinstance(model, MaisiBackbone):
        how = str(getattr(model.config, "mask_input", "concat") or "concat")
        return how in ("concat", "both"), how in ("control", "both")
    return True, False


def predicts_x0(model: nn.Module) -> bool:
    """Whether the backbone outputs a clean-data estimate (``medsyn2_dit`` with ``prediction: x0``)."""
    return isinstance(model, MedSyn2DiT) and str(model.config.prediction) == "x0"


def expand_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Widen the input layer to ``in_channels`` with zero weights for the new (trailing) channels.

    Concatenated mask channels then leave a pretrained model's output unchanged at first. For Flux,
    ``in_channels`` counts packed features (4 per latent channel); packing is channel-major, so the new
    channels' features come last as well. Updates the model config, so save_pretrained records it.
    """
    kind = backbone_type(model)
    old = _in_channels(model)
    if in_channels == old:
        return model
    if in_channels < old:
        raise ValueError(f"cannot shrink the input of a {kind} backbone from {old} to {in_channels} channels")
    for path in _INPUT_LAYERS[kind]:
        layer = _get_module(model, path)
        if layer is None:
            continue
        w = layer.weight.data
        pad = torch.zeros(w.shape[0], in_channels - old, *w.shape[2:], dtype=w.dtype, device=w.device)
        layer.weight = nn.Parameter(torch.cat([w, pad], dim=1))
        if isinstance(layer, nn.Linear):
            layer.in_features = in_channels
        else:
            layer.in_channels = in_channels
    if isinstance(model, MaisiBackbone):
        model.register_to_config(unet_params=dict(model.config.unet_params, in_channels=in_channels))
        if model.config.controlnet_params is not None:
            model.register_to_config(controlnet_params=dict(model.config.controlnet_params, in_channels=in_channels))
    else:
        model.register_to_config(in_channels=in_channels)
    return model


def _load_pretrained(kind: str, cfg: dict, key: str) -> nn.Module:
    cls = BACKBONE_TYPES[kind]
    src = str(cfg["pretrained"])
    params = copy.deepcopy(cfg.get("params") or {})
    local_files_only = bool(cfg.get("local_files_only", _offline()))
    where = f"{key}.pretrained = {src!r}"
    try:
        if kind == "maisi_unet3d" and Path(src).is_file():
            model = cls(**params)  # a MAISI release checkpoint: UNet weights only
            if src.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(src)
            else:
                state = torch.load(src, map_location="cpu", weights_only=True)
            state = state.get("unet_state_dict", state)
            model.unet.load_state_dict(state)
            return model
        if "subfolder" in cfg:
            subfolder = cfg["subfolder"]
        else:
            subfolder = None if (Path(src) / "config.json").is_file() else _DEFAULT_SUBFOLDER.get(kind)
        model = cls.from_pretrained(src, subfolder=subfolder, local_files_only=local_files_only)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        hint = (
            " Offline (HF_HUB_OFFLINE=1) only a local folder or a model already in the Hugging Face cache can "
            "be loaded: fetch it where there is internet (`huggingface-cli download <id>`) and point "
            f"{key}.pretrained at the folder, or set {key}.pretrained: null to train from scratch."
        )
        raise BackbonePretrainedError(f"{where}: cannot load {cls.__name__}: {type(exc).__name__}: {exc}.{hint}") from exc

    want_in = params.pop("in_channels", None) if kind != "maisi_unet3d" else None
    if kind == "maisi_unet3d" and "unet_params" in params:
        unet = dict(params["unet_params"])
        want_in = unet.pop("in_channels", None)
        params = {**params, "unet_params": unet}
    loaded = dict(model.config)
    for name, value in params.items():
        have = loaded.get(name)
        if kind == "maisi_unet3d" and isinstance(value, dict) and isinstance(have, dict):
            have = {k: have.get(k) for k in value}
        if _normalise(have) != _normalise(value):
            raise BackbonePretrainedError(
                f"{where}: {key}.params.{name} = {value!r} differs from the checkpoint's {have!r}; "
                "only in_channels may differ (extra mask channels are added with zero weights)"
            )
    if want_in is not None:
        expand_input_channels(model, int(want_in))
    return model


def _normalise(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    if isinstance(v, dict):
        return {k: _normalise(x) for k, x in v.items()}
    return v


def build_backbone(cfg: dict, key: str = "backbone") -> nn.Module:
    """Build the backbone a config dict describes (see the module docstring); ``key`` names it in errors."""
    kind = cfg.get("type")
    if kind not in BACKBONE_TYPES:
        raise ValueError(f"{key}.type = {kind!r}: choose one of {', '.join(BACKBONE_TYPES)}")
    if cfg.get("pretrained"):
        return _load_pretrained(kind, cfg, key)
    try:
        return BACKBONE_TYPES[kind](**copy.deepcopy(cfg.get("params") or {}))  # config must not alias the caller's
    except TypeError as exc:
        raise ValueError(f"{key}.params do not fit {BACKBONE_TYPES[kind].__name__}: {exc}") from exc


# ----------------------------------------------------------------------------------------------------------
def pooled_text(text_tokens: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked mean of text tokens ``(B, L, D) -> (B, D)``: the pooled vector SD3/Flux want when none is given."""
    if text_mask is None:
        return text_tokens.mean(dim=1)
    w = text_mask.to(text_tokens.dtype)[..., None]
    return (text_tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """Flux packing: ``(B, C, H, W) -> (B, H/2 * W/2, 4C)``, feature index ``c * 4 + 2i + j``."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"flux packs 2x2 patches: height and width must be even, got {h}x{w}")
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: ``(B, H/2 * W/2, 4C) -> (B, C, H, W)``."""
    b, _, f = x.shape
    c = f // 4
    return x.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def flux_position_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Flux image ids for a packed ``(H/2, W/2)`` grid: ``(H/2 * W/2, 3)`` with (0, row, col)."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


def _as_batch_t(t: torch.Tensor | float, b: int, device, dtype=torch.float32) -> torch.Tensor:
    t = torch.as_tensor(t, device=device, dtype=dtype).reshape(-1)
    if t.numel() == 1:
        return t.expand(b)
    if t.numel() != b:
        raise ValueError(f"t has {t.numel()} values for a batch of {b}")
    return t


def predict(
    model: nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    control: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
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

    Returns:
        ``(B, out_channels, *spatial)``: whatever the backbone predicts (velocity, or ``x0`` for a
        ``medsyn2_dit`` with ``prediction: x0``), with the latent's channels, not the mask's.
    """
    kind = backbone_type(model)
    concat, as_control = mask_routing(model) if mask is not None else (True, False)
    if as_control and control is None:
        control = _control_grid(model, mask.to(x_t.dtype), x_t.shape[2:])
    x = x_t if mask is None or not concat else torch.cat([x_t, mask.to(x_t.dtype)], dim=1)
    b = x.shape[0]
    want = _in_channels(model)
    got = x.shape[1] * (4 if kind == "flux" else 1)
    if got != want:
        raise ValueError(
            f"{kind} expects {want} input channels{' (packed: 4 per latent channel)' if kind == 'flux' else ''} "
            f"({'latent + mask' if concat else 'latent; the mask goes to the ControlNet'}), got {x.shape[1]}"
        )
    if control is not None and kind != "maisi_unet3d":
        raise ValueError(f"control is only for maisi_unet3d (ControlNet); {kind} takes the mask on channels (mask=)")
    tt = _as_batch_t(t, b, x.device)
    text = text_tokens.to(x.dtype)
    keep = None if text_mask is None else text_mask.to(device=x.device).bool()

    if kind == "unet2d_condition":
        # DDPM-style integer-scale timesteps (sinusoidal embedding of t * 1000); mask -> additive bias inside.
        return model(x, tt * 1000, encoder_hidden_states=text, encoder_attention_mask=keep).sample
    if kind == "pixart":
        # AdaLayerNormSingle on t * 1000; resolution/aspect-ratio embeddings only when the config uses them
        # (sample_size 128 turns them on by default), in pixels of an 8x VAE as PixArt's pipeline does.
        added = {"resolution": None, "aspect_ratio": None}
        if model.use_additional_conditions:
            h, w = x.shape[-2] * 8, x.shape[-1] * 8
            added = {
                "resolution": torch.tensor([[h, w]], dtype=x.dtype, device=x.device).expand(b, 2),
                "aspect_ratio": torch.tensor([[h / w]], dtype=x.dtype, device=x.device).expand(b, 1),
            }
        return model(
            x, encoder_hidden_states=text, timestep=tt * 1000, added_cond_kwargs=added, encoder_attention_mask=keep
        ).sample
    if kind in ("sd3", "flux"):
        if pooled is None:
            pooled = pooled_text(text, keep)
        if pooled.shape[-1] != model.config.pooled_projection_dim:
            raise ValueError(
                f"{kind}: pooled_projection_dim is {model.config.pooled_projection_dim} but the pooled text vector has "
                f"{pooled.shape[-1]} features; pass pooled= (e.g. CLIP's pooled output) or set pooled_projection_dim "
                "to the text width"
            )
        pooled = pooled.to(x.dtype)
        if kind == "sd3":
            # SD3 pipeline: timestep = sigma * 1000; JointAttnProcessor2_0 has no attention mask.
            return model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=tt * 1000).sample
        h, w = x.shape[-2:]
        packed = pack_latents(x)
        img_ids = flux_position_ids(h, w, device=x.device, dtype=x.dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype)
        kwargs = {}
        if keep is not None:  # joint sequence is [text; image]
            full = torch.cat([keep, torch.ones(b, packed.shape[1], dtype=torch.bool, device=x.device)], dim=1)
            full = full | ~keep.any(dim=1, keepdim=True)
            kwargs["joint_attention_kwargs"] = {"attention_mask": full[:, None, None, :]}
        g = None
        if model.config.guidance_embeds:
            g = _as_batch_t(guidance, b, x.device, x.dtype)
        # Flux multiplies timestep (and guidance) by 1000 itself: it takes t in [0, 1].
        out = model(
            hidden_states=packed, encoder_hidden_states=text, pooled_projections=pooled, timestep=tt,
            img_ids=img_ids, txt_ids=txt_ids, guidance=g, **kwargs,
        ).sample
        return unpack_latents(out, h, w)
    if kind == "medsyn2_dit":
        return model(x, tt, text, encoder_attention_mask=keep).sample
    # maisi_unet3d: MONAI RFlowScheduler scale (t * 1000); context only if the UNet has cross-attention.
    context = text if model.unet.with_conditioning else None
    if model.unet.include_spacing_input and spacing is None:
        raise ValueError("this maisi_unet3d has include_spacing_input: pass spacing=(B, 3) voxel spacing")
    return model(
        x, tt * 1000, context=context, control=control, conditioning_scale=conditioning_scale, spacing=spacing
    )


def _control_grid(model: nn.Module, mask: torch.Tensor, latent_spatial) -> torch.Tensor:
    """The mask resized to the ControlNet's conditioning grid: latent size x ``2 ** (levels - 1)``."""
    import torch.nn.functional as F

    if model.controlnet is None:
        raise ValueError("maisi_unet3d mask_input routes the mask to the ControlNet, but there is none")
    levels = len(model.config.controlnet_params["conditioning_embedding_num_channels"])
    size = tuple(int(s) * 2 ** (levels - 1) for s in latent_spatial)
    if tuple(mask.shape[2:]) == size:
        return mask
    shrink = all(s <= m for s, m in zip(size, mask.shape[2:]))
    return F.interpolate(mask, size=size, mode="area" if shrink else "trilinear",
                         **({} if shrink else {"align_corners": False}))


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
    return velocity_from_x0(out, x_t.float(), _as_batch_t(t, x_t.shape[0], x_t.device))
