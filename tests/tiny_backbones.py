"""Tiny configs of every backbone type, with the real config classes: random weights, CPU forward well
under a second at 32x32 (2D) / 16^3 (3D). Text width = all-MiniLM-L6-v2's (the default text encoder)."""

from __future__ import annotations

TINY_LATENT_CHANNELS = 4
TINY_MASK_CHANNELS = 2
TINY_TEXT_DIM = 384
_C, _M, _D = TINY_LATENT_CHANNELS, TINY_MASK_CHANNELS, TINY_TEXT_DIM

TINY_CONFIGS: dict[str, dict] = {
    "unet2d_condition": {
        "type": "unet2d_condition",
        "pretrained": None,
        "params": {
            "sample_size": 32, "in_channels": _C + _M, "out_channels": _C,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
            "cross_attention_dim": _D, "attention_head_dim": 8,
        },
    },
    "sd3": {
        "type": "sd3",
        "pretrained": None,
        "params": {
            "sample_size": 32, "patch_size": 2, "in_channels": _C + _M, "out_channels": _C,
            "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 4,
            "joint_attention_dim": _D, "caption_projection_dim": 32, "pooled_projection_dim": _D,
            "pos_embed_max_size": 32,
        },
    },
    "pixart": {
        "type": "pixart",
        "pretrained": None,
        "params": {
            "sample_size": 32, "patch_size": 2, "in_channels": _C + _M, "out_channels": _C,
            "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 4,
            "cross_attention_dim": 32, "caption_channels": _D, "use_additional_conditions": False,
        },
    },
    "flux": {
        "type": "flux",
        "pretrained": None,
        "params": {
            "patch_size": 1, "in_channels": (_C + _M) * 4, "out_channels": _C * 4,
            "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
            "joint_attention_dim": _D, "pooled_projection_dim": _D, "guidance_embeds": False,
            "axes_dims_rope": [4, 6, 6],
        },
    },
    "medsyn2_dit": {
        "type": "medsyn2_dit",
        "pretrained": None,
        "params": {
            "spatial_dims": 3, "in_channels": _C + _M, "out_channels": _C, "patch_size": 2,
            "hidden_size": 48, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "cross_attention_dim": _D,
            "gated_attention": True, "depthwise_conv": True, "prediction": "x0",
        },
    },
    "maisi_unet3d": {
        "type": "maisi_unet3d",
        "pretrained": None,
        "params": {
            "unet_params": {
                "spatial_dims": 3, "in_channels": _C + _M, "out_channels": _C, "num_res_blocks": 1,
                "num_channels": [8, 16], "attention_levels": [False, True], "norm_num_groups": 4,
                "num_head_channels": 8, "with_conditioning": True, "cross_attention_dim": _D, "include_fc": True,
            },
            "controlnet_params": {
                "conditioning_embedding_in_channels": _M, "conditioning_embedding_num_channels": [8],
                "use_checkpointing": False,
            },
        },
    },
}
# the 2D MedSyn2 DiT differs from the 3D one only in its token grid and what it predicts
TINY_CONFIGS["medsyn2_dit_2d"] = {
    **TINY_CONFIGS["medsyn2_dit"],
    "params": {**TINY_CONFIGS["medsyn2_dit"]["params"], "spatial_dims": 2, "prediction": "velocity"},
}

# SDXL's UNet: the unet2d_condition config plus the text_time embedding (a pooled text vector, six micro conditions)
TINY_CONFIGS["sdxl"] = {**TINY_CONFIGS["unet2d_condition"], "type": "sdxl", "params": {
    **TINY_CONFIGS["unet2d_condition"]["params"], "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": _D + 6 * 8}}
