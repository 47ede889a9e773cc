"""MAISI's 3D diffusion UNet with an optional ControlNet as one diffusers model (MAISI-v2).

MONAI's ``DiffusionModelUNetMaisi`` and ``ControlNetMaisi`` are plain ``nn.Module``s; :class:`MaisiBackbone`
wraps them so that they save and load like every other backbone (``save_pretrained`` /
``from_pretrained``) and take PEFT adapters.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin

__all__ = ["MASK_INPUTS", "MaisiBackbone", "binarize_label_map", "label_map"]

#: Where ``predict(..., mask=)`` sends the mask of a ``maisi_unet3d`` (``params.mask_input``).
MASK_INPUTS = ("concat", "control", "both")

UNET_SHARED_WITH_CONTROLNET = (
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

    The released MAISI networks take more than latents (``configs/config_network_rflow.json`` of
    NV-Generate-CTMR: ``include_spacing_input``, ``num_class_embeds: 128``): ``spacing_mm`` is the voxel
    spacing of the training volumes (every volume of a study shares the registration grid), passed as
    MAISI passes it (mm x 100); ``class_label`` the modality class (MAISI-v2's CT: 1);
    ``control_label_ids`` the MAISI label id of each condition channel (in the study's channel order,
    e.g. liver 1, spleen 3, lung 20, bone 21): the ControlNet then sees the masks as MAISI's label map,
    binarised to ``conditioning_embedding_in_channels`` bits (bit ``c`` of the id on channel ``c``), where
    the study's channels overlap the last one wins.
    """

    @register_to_config
    def __init__(self, unet_params: dict, controlnet_params: dict | None = None, controlnet_from_unet: bool = True,
                 mask_input: str = "concat", spacing_mm: list[float] | None = None, class_label: int | None = None,
                 control_label_ids: list[int] | None = None):
        super().__init__()
        if mask_input not in MASK_INPUTS:
            raise ValueError(f"maisi_unet3d mask_input must be one of {MASK_INPUTS}, got {mask_input!r}")
        if mask_input != "concat" and controlnet_params is None:
            raise ValueError(f"maisi_unet3d mask_input {mask_input!r} needs a ControlNet (controlnet_params)")
        if spacing_mm is not None and len(spacing_mm) != 3:
            raise ValueError(f"maisi_unet3d spacing_mm must be [x, y, z] in mm, got {spacing_mm}")
        if control_label_ids is not None:
            if controlnet_params is None:
                raise ValueError("maisi_unet3d control_label_ids encode masks for a ControlNet: set controlnet_params")
            bits = int(controlnet_params["conditioning_embedding_in_channels"])
            if max(control_label_ids) >= 2 ** bits or min(control_label_ids) < 1:
                raise ValueError(f"maisi_unet3d control_label_ids {control_label_ids}: each id must be in [1, {2 ** bits})"
                                 f" ({bits} conditioning channels = bits)")
        from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
        from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

        self.unet = DiffusionModelUNetMaisi(**unet_params)
        self.controlnet = None
        if controlnet_params is not None:
            shared = {k: unet_params[k] for k in UNET_SHARED_WITH_CONTROLNET if k in unet_params}
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


def label_map(present: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """``(B, C, *spatial)`` bool masks -> ``(B, *spatial)`` label map: channel ``c``'s voxels get ``ids[c]``
    (a later channel wins where they overlap), background 0."""
    if present.shape[1] != len(ids):
        raise ValueError(f"{present.shape[1]} condition channels but {len(ids)} control_label_ids")
    labels = torch.zeros(present.shape[:1] + present.shape[2:], dtype=torch.long, device=present.device)
    for c, label in enumerate(ids):
        labels = torch.where(present[:, c], torch.as_tensor(int(label), device=present.device), labels)
    return labels


def binarize_label_map(labels: torch.Tensor, bits: int) -> torch.Tensor:
    """``(B, *spatial)`` integer labels -> ``(B, bits, *spatial)`` 0/1 floats, bit ``c`` of the label on channel
    ``c`` (MAISI's ControlNet conditioning)."""
    powers = 2 ** torch.arange(bits, device=labels.device)
    return (labels.unsqueeze(1) & powers.view(1, -1, *[1] * (labels.dim() - 1))).ne(0).float()
