"""VAE tuning (MedSyn2 Supp. 7.1.1 losses on random patches) through the one training loop.

MedSyn2 trains its VAE with reconstruction, LPIPS, KL and GAN losses on randomly sampled 96^3 patches
(Adam, lr 1e-5, constant); :func:`tune_vae` does the same at a configurable scale with
:func:`medsynth.train.train`: the autoencoder and its discriminator are the two players of
:class:`medsynth.vae.step.VAEPair` (one AdamW step, the discriminator at ``losses.disc_lr``), the learning
rate is constant (``lr_schedule: constant``, no clipping), and the loop gives it everything else:

* seeded data order, patch positions and posterior noise (drawn per step from ``(seed, step)``, the same
  on every process: ``W`` accelerate workers with ``batch_size / W`` samples each reproduce the
  one-process run);
* ``loss_curve.csv``: one row per step with every term (``VAELoss.TERMS``; NaN while a term is off);
* checkpoints every ``checkpoint_every`` steps and at the end (the loop's layout, ``accelerator.save_state``),
  resumed automatically by a rerun with the same settings and images (bit for bit on the CPU);
  ``resume: false`` starts over;
* ``steps: 0`` (frozen, ViCTr's and MAISI-v2's VAE): no optimizer step and no checkpoint; the same
  outputs (``final/`` of the pretrained weights unchanged, the statistics, ``train_config.json``, a curve
  with the columns and no rows); nothing to fit, so ``images`` may be ``None`` and the statistics' images
  streamed part by part (``stats_images``, :data:`medsynth.vae.latents.ImageParts`);
* a fit set too large for memory: ``images`` may be a dataset (``len()`` and ``get_batch(indices) ->
  {"image": float32 tensor}``, e.g. :class:`medsynth.io.shard_dataset.ShardDataset`) read batch by batch;
  the run's identity (the fingerprint of its settings and fit set) streams the set's bytes in order, the same
  digest as of the array in memory;
* SIGTERM / SIGUSR1 (SLURM before a time limit): the step in progress finishes, a checkpoint is written
  and the summary's ``status`` is ``"preempted"`` (no ``final/``); the rerun resumes.

At the end: ``final/`` (diffusers ``save_pretrained`` folder, or MONAI ``model.safetensors`` +
``config.json``, with ``medsynth_vae.json``) and ``latent_stats.json`` (per-channel z-norm statistics,
MedSyn2 Sec. 3).

Tune config keys: ``steps``, ``batch_size`` (global, divided over the processes), ``lr``,
``weight_decay``, ``seed``, ``patch_size`` (int or list; ``null`` = whole images), ``checkpoint_every``,
``keep_checkpoints``, ``resume``, ``progress``, ``stats_batch_size`` and ``losses`` (see
:class:`medsynth.vae.losses.LossConfig`); keys left out take the schema's defaults
(:meth:`TuneConfig.from_config`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsynth.fsutil import atomic_dir, write_text_atomic
from medsynth.train.checkpoints import latest_checkpoint
from medsynth.train.config import TrainConfig, TrainOutputs, TrainResult
from medsynth.train.curve import in_progress_path, write_curve
from medsynth.train.loop import make_accelerator, train
from medsynth.vae.latents import ImageParts, image_parts, latent_statistics, save_latent_statistics
from medsynth.vae.losses import LossConfig, VAELoss
from medsynth.vae.metrics import reconstruction_metrics
from medsynth.vae.models import downsample_factor, image_channels, latent_pack, model_config, save_autoencoder
from medsynth.vae.step import VAEPair, VAEStep

log = logging.getLogger(__name__)

__all__ = ["TuneConfig", "tune_vae", "latest_checkpoint", "latent_statistics", "reconstruction_metrics"]


@dataclass(frozen=True)
class TuneConfig:
    """Options of :func:`tune_vae` (see module docstring); build it with :meth:`from_config`, which takes the
    schema's defaults (config/schema.yaml is their one home)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    patch_size: int | list[int] | None
    checkpoint_every: int
    keep_checkpoints: int
    resume: bool
    progress: bool
    stats_batch_size: int
    losses: dict

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> "TuneConfig":
        """Build from a tune config (the fields of this class), rejecting unknown keys. Keys left out take the
        schema's defaults of ``volumes.vae`` (validated): the values this tuning code used before the schema
        held them (rule ``vae`` passes a complete ``vae`` or ``volumes.vae`` section, so none is left out)."""
        from medsynth.settings import section

        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown vae tune config keys {unknown}; known: {sorted(known)}")
        full = section("volumes", {"vae": cfg})["vae"]
        return cls(**{name: full[name] for name in sorted(known)})


def _check_images(model: nn.Module, images: torch.Tensor, patch: list[int] | None) -> None:
    cfg = model_config(model)
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be [N, C, H, W] or [N, C, D, H, W], got {tuple(images.shape)}")
    if cfg is None:
        return
    if images.ndim - 2 != int(cfg["spatial_dims"]) or images.shape[1] != image_channels(model):
        raise ValueError(f"images {tuple(images.shape)} do not match the {cfg['spatial_dims']}D VAE for "
                         f"{image_channels(model)}-channel images")
    factor = downsample_factor(cfg) * latent_pack(cfg)  # the latent grid folds by latent_pack too
    sizes = patch if patch is not None else list(images.shape[2:])
    if any(s % factor for s in sizes):
        raise ValueError(f"training size {sizes} must be divisible by the VAE downsampling factor x latent_pack = {factor}")


def _first_part(images: ImageParts) -> tuple[torch.Tensor, Iterable[torch.Tensor | np.ndarray]]:
    """The first part of ``images`` (as a tensor, for the shape checks) and all the parts, the first included
    (a generator's first part is read once)."""
    parts = iter(image_parts(images))
    first = next(parts, None)
    if first is None:
        raise ValueError("tune_vae: no images for the latent statistics (stats_images has no part)")
    return torch.as_tensor(np.asarray(first) if not isinstance(first, torch.Tensor) else first), \
        itertools.chain([first], parts)


def _is_dataset(images: Any) -> bool:
    """``images`` is a dataset read on demand (``get_batch``), not an array."""
    return hasattr(images, "get_batch") and not isinstance(images, (torch.Tensor, np.ndarray))


def _dataset_blocks(dataset: Any, max_bytes: int = 64 * 2**20) -> Iterator[torch.Tensor]:
    """The dataset's images in order, as consecutive blocks of about ``max_bytes`` (at least one item)."""
    if hasattr(dataset, "blocks"):
        yield from dataset.blocks()
        return
    n = len(dataset)
    first = dataset.get_batch([0])["image"]
    rows = max(1, max_bytes // max(first.numel() * first.element_size(), 1))
    for a in range(0, n, rows):
        yield dataset.get_batch(list(range(a, min(a + rows, n))))["image"]


def _fingerprint(cfg: Mapping, images: Any) -> str:
    """sha256 of the settings and the fit set's float32 bytes: ``images.numpy().tobytes()`` of an array, or of a
    dataset's images streamed in order (the same digest as of its array in memory)."""
    digest = hashlib.sha256(json.dumps(dict(cfg), sort_keys=True, default=str).encode())
    if images is None:
        return digest.hexdigest()
    for block in (_dataset_blocks(images) if _is_dataset(images) else (images,)):
        digest.update(np.ascontiguousarray(block.detach().cpu().float().numpy()).tobytes())
    return digest.hexdigest()


def _frozen(paths: TrainOutputs, settings: dict, world: int, main: bool) -> TrainResult:
    """The records of a zero-step run (``steps: 0``, the pretrained VAE frozen): the loss curve with the
    columns of a tuned run's and no rows, and ``train_config.json``; no checkpoint."""
    if main:
        paths.curve.parent.mkdir(parents=True, exist_ok=True)
        in_progress_path(paths.curve).unlink(missing_ok=True)  # a killed tuning run's rows are not this run's
        write_curve(paths.curve, [], ["step", "lr", "grad_norm", *VAELoss.TERMS, "loss"])
        record = {k: v for k, v in settings.items() if k != "fingerprint"}
        write_text_atomic(paths.config, json.dumps({**record, "frozen": True, "processes": world}, indent=2) + "\n")
    log.info("vae.steps 0: the pretrained VAE as released (frozen), no tuning")
    return TrainResult(status="completed", step=0, output_dir=paths.final.parent)


def tune_vae(model: nn.Module, images: torch.Tensor | np.ndarray | Any | None, cfg: dict,
             outputs: TrainOutputs | str | Path,
             *, on_step: Callable[[int, dict[str, float]], None] | None = None,
             stats_images: ImageParts | None = None, stats_path: str | Path | None = None) -> dict:
    """Tune ``model`` on ``images`` (``[N, C, *spatial]`` in [-1, 1], or a dataset of such images read on
    demand: ``len()`` and ``get_batch(indices) -> {"image": tensor}``); see the module docstring.

    ``outputs``: where the run writes (a :class:`~medsynth.train.TrainOutputs`, or a folder with that
    layout). ``on_step(step, row)`` is called after every completed step (1-based, the loss-curve row;
    e.g. to interrupt a run in tests). ``stats_images``: the images whose latents give the statistics
    (default ``images``, a dataset's in blocks): one array or its parts in turn (e.g. a generator of one array
    per shard, read once, by the main process; :func:`~medsynth.vae.latents.latent_statistics`), written to
    ``stats_path`` (default ``latent_stats.json`` beside ``outputs.final``). ``images`` may be ``None`` only
    with ``steps: 0`` and ``stats_images`` (a frozen VAE fits nothing; every process checks the first part of
    ``stats_images`` instead).
    Returns ``{"status", "steps", "start_step", "seconds_per_step", "last_terms",
    "final_dir", "latent_stats", "latent_stats_path", "loss_curve", "checkpoint", "processes"}``; a
    preempted run and the non-main processes of a multi-process run return no final model or
    statistics (``None``).
    """
    opts = TuneConfig.from_config(cfg)
    paths = TrainOutputs.of(outputs)
    stats_path = Path(stats_path) if stats_path is not None else paths.final.parent / "latent_stats.json"
    if _is_dataset(images):  # read batch by batch; the shape checks use its first item
        probe = images.get_batch([0])["image"]
    elif images is not None:
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(np.asarray(images))
        images = probe = images.float()
    elif opts.steps == 0 and stats_images is not None:  # frozen: nothing to fit, the statistics' images stream
        probe, stats_images = _first_part(stats_images)
    else:
        raise ValueError("tune_vae: images (the set to fit) are needed unless steps is 0 and stats_images are given")
    spatial_dims = probe.ndim - 2
    if opts.patch_size is None:
        patch = None
    elif isinstance(opts.patch_size, int):
        patch = [int(opts.patch_size)] * spatial_dims
    else:
        patch = [int(p) for p in opts.patch_size]
    _check_images(model, probe, patch)

    loss_cfg = LossConfig.from_config(opts.losses)
    # fp32 (the VAE losses are precision-sensitive); the discriminator sits out its warm-up steps
    accelerator = make_accelerator(find_unused_parameters=loss_cfg.adv_weight > 0)
    world, main = accelerator.num_processes, accelerator.is_main_process
    if opts.batch_size % world:
        raise ValueError(f"vae batch_size {opts.batch_size} must be divisible by the {world} training processes")
    # identity of this run (settings + training images): checkpoints of another run are never continued
    # (a frozen run has no checkpoint and no fit set: its settings alone)
    fingerprint = _fingerprint(cfg, images)
    if not opts.resume and main:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
    accelerator.wait_for_everyone()
    settings = dict(steps=opts.steps, batch_size=opts.batch_size // world, lr=opts.lr, weight_decay=opts.weight_decay,
                    max_grad_norm=None, lr_schedule="constant", checkpoint_every=opts.checkpoint_every,
                    keep_checkpoints=opts.keep_checkpoints, seed=opts.seed, output_dir=str(paths.final.parent),
                    save_final=False, progress=opts.progress, fingerprint=fingerprint)
    if opts.steps == 0:  # frozen (ViCTr, MAISI-v2): the pretrained VAE as released, no optimizer step
        model.to(accelerator.device)  # where a tuned model would be: the statistics and metrics run there
        result = _frozen(paths, settings, world, main)
        accelerator.wait_for_everyone()
    else:
        torch.manual_seed(opts.seed)  # the discriminator's initialisation
        losses = VAELoss(loss_cfg, spatial_dims, in_channels=probe.shape[1])
        groups = [{"params": list(model.parameters())}]
        if losses.discriminator is not None:
            groups.append({"params": list(losses.discriminator.parameters()), "lr": loss_cfg.disc_lr or opts.lr})
        dataset = images if _is_dataset(images) else {"image": images}
        result = train(VAEPair(model, losses), VAEStep(patch, opts.seed), dataset, TrainConfig(**settings),
                       trainable_params=groups, accelerator=accelerator, on_step_end=on_step, outputs=paths)

    model.eval()
    final_dir = stats = saved_stats = None
    if result.status == "completed" and main:
        final_dir = paths.final
        with atomic_dir(final_dir) as tmp:
            save_autoencoder(model, tmp)
        if stats_images is None:
            stats_images = _dataset_blocks(images) if _is_dataset(images) else images
        stats = latent_statistics(model, stats_images, opts.stats_batch_size)
        saved_stats = save_latent_statistics(stats, stats_path)
    accelerator.wait_for_everyone()
    ran = len(result.history)
    last = result.history[-1] if ran else {}
    return {
        "status": result.status,
        "processes": world,
        "steps": opts.steps,
        "start_step": result.step - ran,
        "seconds_per_step": result.seconds_per_step,
        "last_terms": {k: v for k, v in last.items() if k in VAELoss.TERMS},
        "final_dir": str(final_dir) if final_dir is not None else None,
        "latent_stats": stats,
        "latent_stats_path": str(saved_stats) if saved_stats is not None else None,
        "loss_curve": str(paths.curve),
        "checkpoint": str(result.checkpoint) if result.checkpoint is not None else None,
    }
