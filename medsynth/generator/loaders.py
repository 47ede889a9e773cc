"""Loaders the generator's stages and sampling share: threads, text encoder, VAE, latent data, backbone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from medsynth.generator.data import LatentData, build_latent_data
from medsynth.launch import job_device, set_threads
from medsynth.models.backbones import adapter_for, build_backbone, input_channels, mask_routing

__all__ = ["set_generator_threads", "prompt_settings", "report_settings", "inpainting_settings", "resolve_text_encoder",
           "load_vae", "load_latent_data", "check_channels", "backbone_dims", "load_backbone"]

#: the keys of config ``generator`` that make the prompts (the rest describe the backbone)
PROMPT_KEYS = ("text_encoder", "severity", "max_length", "encode_batch_size", "report")


def prompt_settings(gen_cfg: Mapping) -> dict:
    """The prompt keys of a ``generator`` section (:data:`PROMPT_KEYS`), those left out with the schema's
    defaults (a caller outside the workflow may pass a partial section)."""
    from medsynth.settings import section

    return section("generator", {k: gen_cfg[k] for k in PROMPT_KEYS if k in gen_cfg})


def report_settings(prompts: Mapping) -> dict | None:
    """The ``report`` section of complete prompt settings (:func:`prompt_settings`) when enabled, else ``None``."""
    report = prompts["report"]
    return dict(report) if report["enabled"] else None


def inpainting_settings(gen_cfg: Mapping) -> dict | None:
    """The ``inpainting_inputs`` section of a ``generator`` section when enabled (schema defaults filled in),
    else ``None``."""
    from medsynth.settings import section

    cfg = section("generator", {"inpainting_inputs": gen_cfg.get("inpainting_inputs", {})})["inpainting_inputs"]
    return dict(cfg) if cfg["enabled"] else None


def set_generator_threads(gen_cfg: Mapping) -> None:
    """Torch intra-op threads of a generator job: ``generator.threads`` (the schema's default when left out)."""
    from medsynth.settings import section

    set_threads(section("generator", {k: gen_cfg[k] for k in ("threads",) if k in gen_cfg}))


def resolve_text_encoder(gen_cfg: Mapping, text_encoder):
    """``text_encoder`` when given, else the one ``generator.text_encoder`` configures."""
    if text_encoder is not None:
        return text_encoder
    from medsynth.models.text import build_text_encoder

    return build_text_encoder(prompt_settings(gen_cfg)["text_encoder"], key="generator.text_encoder")


def load_vae(vae_dir: str | Path, stats_path: str | Path):
    """The tuned VAE (frozen, on the job's device) and its latent statistics: ``(vae, stats)``."""
    from medsynth.vae import load_autoencoder, load_latent_statistics

    vae = load_autoencoder(vae_dir).eval().requires_grad_(False).to(job_device())  # encodes the training latents
    return vae, load_latent_statistics(stats_path)


def load_latent_data(shards, vae_dir, stats_path, gen_cfg, stage_cfg, text_encoder, severity: bool | None = None, *,
          vae_stats=None, slices=None) -> LatentData:
    """The stage's latent dataset; ``vae_stats`` (:func:`load_vae`) and ``slices`` when already loaded.

    ``stage_cfg``: the stage's section (its ``select``, ``mask_dropout`` (> 0: the prompts' no-mask variants
    are encoded too) and, unless ``severity`` says, ``severity_prompt``); the prompt keys of ``gen_cfg`` take
    the schema's defaults when left out (:func:`prompt_settings`)."""
    vae, stats = vae_stats if vae_stats is not None else load_vae(vae_dir, stats_path)
    use_severity = bool(stage_cfg["severity_prompt"]) if severity is None else severity
    prompts = prompt_settings(gen_cfg)
    return build_latent_data(shards, vae, stats, resolve_text_encoder(gen_cfg, text_encoder), stage_cfg["select"],
                             prompts["severity"] if use_severity else None, int(prompts["max_length"]),
                             int(prompts["encode_batch_size"]), slices=slices, report=report_settings(prompts),
                             mask_variants=float(stage_cfg.get("mask_dropout", 0.0)) > 0,
                             inpainting=inpainting_settings(gen_cfg))


def check_channels(model: nn.Module, data: LatentData) -> None:
    """The backbone's input (and ControlNet conditioning) channels against the data's latent + mask channels."""
    latent, mask = data.dataset.tensors["latent"], data.dataset.tensors["mask"]
    context = data.dataset.tensors.get("context")
    extra = 0 if context is None else context.shape[1]
    concat, control = mask_routing(model)
    if extra and not concat:
        raise ValueError("generator.inpainting_inputs needs a backbone that takes its conditions on input channels, "
                         "not through a ControlNet")
    per = adapter_for(model).features_per_channel  # Flux: 2x2-packed, 4 input features per latent channel
    want, have = input_channels(model), (latent.shape[1] + extra + (mask.shape[1] if concat else 0)) * per
    if want != have:
        what = ("latent + inpainting mask + masked-image latent + mask" if extra else "latent + mask") if concat \
            else "latent (the mask goes to the ControlNet)"
        packed = f" x {per} packed features" if per > 1 else ""
        raise ValueError(f"generator.backbone in_channels = {want}, but {what} channels{packed} = {have}")
    if control:
        cond = int(model.config.controlnet_params["conditioning_embedding_in_channels"])
        ids = model.config.get("control_label_ids")
        if ids and len(ids) != mask.shape[1]:
            raise ValueError(f"generator.backbone.params.control_label_ids has {len(ids)} MAISI label ids, but the "
                             f"data has {mask.shape[1]} mask channels (one id per channel)")
        if not ids and cond != mask.shape[1]:
            raise ValueError(f"generator.backbone.params.controlnet_params.conditioning_embedding_in_channels = "
                             f"{cond}, but the data has {mask.shape[1]} mask channels (or set control_label_ids)")
    if latent.ndim - 2 != backbone_dims(model):
        raise ValueError(f"generator.backbone works on {backbone_dims(model)}D inputs, the latents are "
                         f"{latent.ndim - 2}D (2D slices need a 2D backbone, volumes a 3D one)")


def backbone_dims(model: nn.Module) -> int:
    """1, 2 or 3: the spatial dimensionality the backbone works on."""
    from medsynth.models.backbones import spatial_dims

    return spatial_dims(model)


def load_backbone(gen_cfg: Mapping, folder: str | Path) -> nn.Module:
    """The ``generator.backbone`` saved in ``folder`` (a trained stage), offline."""
    cfg = {**dict(gen_cfg["backbone"]), "pretrained": str(folder), "local_files_only": True}
    cfg.pop("subfolder", None)
    return build_backbone(cfg, key="generator.backbone")
