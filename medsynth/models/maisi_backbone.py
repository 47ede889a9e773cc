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

__all__ = ["MASK_INPUTS", "MaisiBackbone"]

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
