"""Denoising backbones (diffusers / MONAI / MedSyn2's DiT), text encoders and compound prompts."""
