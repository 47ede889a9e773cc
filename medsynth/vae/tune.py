"""Plain VAE tuning loop with resumable checkpoints (MedSyn2 Supp. 7.1.1 losses on random patches).

MedSyn2 trains its VAE with reconstruction, LPIPS, KL and GAN losses on randomly sampled 96^3
patches (Adam, lr 1e-5); this loop does the same with AdamW at a configurable scale:

* fixed seed; batches, patch positions and posterior noise all come from one ``torch.Generator``;
* ``loss_curve.csv``: one row per step with every term (``VAELoss.TERMS``; blank when a term is off);
* every ``checkpoint_every`` steps ``checkpoints/step_XXXXXXXX/`` (written atomically):
  ``model.safetensors`` (+ ``discriminator.safetensors``) and ``state.pt`` with the optimiser
  states, step and RNG states - tensors and plain containers only, read back with
  ``torch.load(weights_only=True)``; a rerun resumes from the latest and reproduces the
  uninterrupted run exactly (CPU);
* at the end ``final/`` (diffusers ``save_pretrained`` folder, or MONAI ``model.safetensors`` +
  ``config.json``) and ``latent_stats.json`` (per-channel z-norm statistics, MedSyn2 Sec. 3);
* SIGTERM / SIGUSR1 (SLURM before a time limit): the step in progress finishes, a checkpoint is
  written and the summary's ``status`` is ``"preempted"`` (no ``final/``); the rerun resumes;
* the model trains on the accelerator's device. Under ``accelerate launch`` (:mod:`medsynth.launch`)
  each of the ``W`` processes takes its ``batch_size / W`` share of the same global batch (every
  process draws the same indices, patches and posterior noise from the shared generator) and the
  gradients are averaged, so ``W`` processes reproduce the single-process run; the main process writes
  the curve, checkpoints and final model.

Tune config keys: ``steps``, ``batch_size``, ``lr``, ``weight_decay``, ``seed``, ``patch_size``
(int or list; ``null`` = whole images), ``checkpoint_every``, ``keep_checkpoints``, ``resume``,
``progress``, ``stats_batch_size`` and ``losses`` (see :class:`medsynth.vae.losses.LossConfig`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from medsynth.fsutil import atomic_dir, atomic_path
from medsynth.train.config import TrainOutputs
from medsynth.train.loop import SignalFlag, make_accelerator
from medsynth.vae.latents import latent_statistics, save_latent_statistics
from medsynth.vae.losses import LossConfig, VAELoss
from medsynth.vae.metrics import reconstruction_metrics
from medsynth.vae.models import decode, downsample_factor, encode, model_config, save_autoencoder

log = logging.getLogger(__name__)

__all__ = ["TuneConfig", "tune_vae", "latest_checkpoint", "latent_statistics", "reconstruction_metrics"]

CURVE_COLUMNS = ("step", *VAELoss.TERMS)


@dataclass(frozen=True)
class TuneConfig:
    """Options of :func:`tune_vae` (see module docstring)."""

    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    patch_size: int | list[int] | None = None
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    resume: bool = True
    progress: bool = True
    stats_batch_size: int = 8
    losses: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict | None) -> "TuneConfig":
        """Build from a dict, rejecting unknown keys."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown vae tune config keys {unknown}; known: {sorted(known)}")
        return cls(**cfg)


def _random_patches(batch: torch.Tensor, patch: list[int] | None, gen: torch.Generator) -> torch.Tensor:
    """One random crop of size ``patch`` per sample (MedSyn2: randomly sampled patches)."""
    if patch is None:
        return batch
    spatial = batch.shape[2:]
    out = []
    for sample in batch:
        idx = [slice(None)]
        for size, p in zip(spatial, patch):
            start = int(torch.randint(0, size - p + 1, (1,), generator=gen))
            idx.append(slice(start, start + p))
        out.append(sample[tuple(idx)])
    return torch.stack(out)


def _checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    for d in root.glob("step_*") if root.is_dir() else []:
        if d.is_dir() and (d / "state.pt").is_file() and d.name[5:].isdigit():
            found.append((int(d.name[5:]), d))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder in ``root`` (a run's ``checkpoints/``; ``None`` if none)."""
    dirs = _checkpoint_dirs(Path(root))
    return dirs[-1][1] if dirs else None


def _state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _posterior_sample(vae: nn.Module, batch: torch.Tensor, gen: torch.Generator, global_batch: int,
                      offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(recon, mean, logvar)`` of ``batch`` with one posterior sample per image.

    The noise is drawn for the whole global batch from the shared CPU generator (so every process
    keeps the same generator state) and this process's rows ``offset:offset + len(batch)`` are used.
    """
    mean, logvar = encode(vae, batch)
    noise = torch.randn((global_batch, *mean.shape[1:]), generator=gen, dtype=mean.dtype)
    noise = noise[offset:offset + len(batch)].to(mean.device)
    return decode(vae, mean + torch.exp(0.5 * logvar) * noise), mean, logvar


def _average_gradients(module: nn.Module, accelerator) -> None:
    """Mean of every gradient over the processes (one all-reduce; nothing to do for one process)."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _mean_terms(terms: dict[str, float], accelerator) -> dict[str, float]:
    """The loss terms averaged over the processes (each computed them on its share of the batch)."""
    if accelerator.num_processes == 1 or not terms:
        return terms
    keys = sorted(terms)
    values = accelerator.reduce(torch.tensor([terms[k] for k in keys], dtype=torch.float64,
                                             device=accelerator.device), reduction="mean")
    return {k: float(v) for k, v in zip(keys, values.cpu())}


def _save_checkpoint(root: Path, step: int, model: nn.Module, disc: nn.Module | None, opt: torch.optim.Optimizer,
                     opt_d: torch.optim.Optimizer | None, gen: torch.Generator, keep: int,
                     fingerprint: str, curve: Path) -> Path:
    final = root / f"step_{step:08d}"
    with atomic_dir(final) as tmp:
        save_file(_state_dict(model), str(tmp / "model.safetensors"))
        if disc is not None:
            save_file(_state_dict(disc), str(tmp / "discriminator.safetensors"))
        state = {"step": step, "optimizer": opt.state_dict(), "sampler_rng": gen.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if opt_d is not None:
            state["disc_optimizer"] = opt_d.state_dict()
        torch.save(state, tmp / "state.pt")
        (tmp / "fingerprint.txt").write_text(fingerprint + "\n")
        if curve.exists():  # restored on resume if Snakemake deleted the output meanwhile
            shutil.copyfile(curve, tmp / "loss_curve.csv")
    for _, old in _checkpoint_dirs(root)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(folder: Path, model: nn.Module, disc: nn.Module | None, opt: torch.optim.Optimizer,
                     opt_d: torch.optim.Optimizer | None, gen: torch.Generator) -> int:
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    if disc is not None:
        disc_file = folder / "discriminator.safetensors"
        if not disc_file.is_file() or "disc_optimizer" not in state:
            raise RuntimeError(f"{folder}: checkpoint has no discriminator but losses.adv_weight > 0 now")
        disc.load_state_dict(load_file(str(disc_file)), strict=True)
        opt_d.load_state_dict(state["disc_optimizer"])
    gen.set_state(state["sampler_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


class _LossCurve:
    """Append-only ``loss_curve.csv``; on resume rows after the checkpoint step are dropped."""

    def __init__(self, path: Path, keep_until: int) -> None:
        rows: list[dict] = []
        if keep_until > 0 and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        with atomic_path(path, suffix=".csv") as tmp:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CURVE_COLUMNS)

    def append(self, step: int, terms: dict[str, float]) -> None:
        self._writer.writerow({"step": step, **{k: (f"{terms[k]:.8g}" if k in terms else "") for k in VAELoss.TERMS}})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _check_images(model: nn.Module, images: torch.Tensor, patch: list[int] | None) -> None:
    cfg = model_config(model)
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be [N, C, H, W] or [N, C, D, H, W], got {tuple(images.shape)}")
    if cfg is None:
        return
    if images.ndim - 2 != int(cfg["spatial_dims"]) or images.shape[1] != int(cfg["in_channels"]):
        raise ValueError(f"images {tuple(images.shape)} do not match the {cfg['spatial_dims']}D VAE with "
                         f"in_channels={cfg['in_channels']}")
    factor = downsample_factor(cfg)
    sizes = patch if patch is not None else list(images.shape[2:])
    if any(s % factor for s in sizes):
        raise ValueError(f"training size {sizes} must be divisible by the VAE downsampling factor {factor}")


def tune_vae(model: nn.Module, images: torch.Tensor | np.ndarray, cfg: dict, outputs: TrainOutputs | str | Path, *,
             on_step: Callable[[int, dict[str, float]], None] | None = None,
             stats_images: torch.Tensor | np.ndarray | None = None, stats_path: str | Path | None = None) -> dict:
    """Tune ``model`` on ``images`` (``[N, C, *spatial]`` in [-1, 1]); see the module docstring.

    ``on_step(step, terms)`` is called after every completed step (1-based; e.g. for monitoring, or
    to interrupt a run in tests). ``outputs``: where the run writes (``final``, ``curve``, ``checkpoints`` of
    a :class:`~medsynth.train.TrainOutputs`, or a folder with that layout). ``stats_images``: the images
    whose latents give the statistics (default ``images``), written to ``stats_path`` (default
    ``latent_stats.json`` beside ``outputs.final``). Returns ``{"status", "steps", "start_step", "seconds_per_step", "last_terms",
    "final_dir", "latent_stats", "latent_stats_path", "loss_curve", "checkpoint", "processes"}``; a
    preempted run and the non-main processes of a multi-process run return no final model or
    statistics (``None``).
    """
    opts = TuneConfig.from_config(cfg)
    paths = TrainOutputs.of(outputs)
    stats_path = Path(stats_path) if stats_path is not None else paths.final.parent / "latent_stats.json"
    paths.curve.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    images = images.float()
    spatial_dims = images.ndim - 2
    if opts.patch_size is None:
        patch = None
    elif isinstance(opts.patch_size, int):
        patch = [int(opts.patch_size)] * spatial_dims
    else:
        patch = [int(p) for p in opts.patch_size]
    _check_images(model, images, patch)

    accelerator = make_accelerator()  # fp32: the VAE losses are precision-sensitive
    rank, world, main, device = (accelerator.process_index, accelerator.num_processes, accelerator.is_main_process,
                                 accelerator.device)
    if opts.batch_size % world:
        raise ValueError(f"vae batch_size {opts.batch_size} must be divisible by the {world} training processes")
    local = opts.batch_size // world
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    loss_cfg = LossConfig.from_config(opts.losses)
    losses = VAELoss(loss_cfg, spatial_dims, in_channels=images.shape[1]).to(device)
    disc = losses.discriminator
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    opt_d = (torch.optim.AdamW(disc.parameters(), lr=loss_cfg.disc_lr or opts.lr, weight_decay=opts.weight_decay)
             if disc is not None else None)

    ckpt_root = paths.checkpoints
    start = 0
    # identity of this run (settings + training images): checkpoints of another run are never continued
    fingerprint = hashlib.sha256(json.dumps(dict(cfg), sort_keys=True, default=str).encode()
                                 + images.numpy().tobytes()).hexdigest()
    latest = latest_checkpoint(ckpt_root) if opts.resume else None
    if latest is not None:
        saved = (latest / "fingerprint.txt").read_text().strip() if (latest / "fingerprint.txt").exists() else ""
        if saved != fingerprint:
            log.warning("not resuming %s: written by a run with other settings or images; starting from step 0",
                        latest)
            accelerator.wait_for_everyone()
            if main:
                shutil.rmtree(ckpt_root, ignore_errors=True)
            latest = None
    if latest is not None:
        start = _load_checkpoint(latest, model, disc, opt, opt_d, gen)
        saved_curve = latest / "loss_curve.csv"
        if main and saved_curve.exists() and not paths.curve.exists():
            shutil.copyfile(saved_curve, paths.curve)
    curve = _LossCurve(paths.curve, keep_until=start) if main else None

    model.train()
    if disc is not None:
        disc.train()
    compute_s, terms, last_ckpt, status, ran = 0.0, {}, latest, "completed", 0
    flag = SignalFlag(True)
    try:
        progress = tqdm(range(start, opts.steps), initial=start, total=opts.steps, desc="vae",
                        disable=not (opts.progress and main))
        with flag:
            for step in progress:
                t0 = time.perf_counter()
                idx = torch.randint(0, len(images), (opts.batch_size,), generator=gen)
                batch = _random_patches(images[idx], patch, gen)[rank * local:(rank + 1) * local].to(device)
                recon, mean, logvar = _posterior_sample(model, batch, gen, opts.batch_size, rank * local)
                total, terms = losses.generator_loss(recon, batch, mean, logvar, step)
                opt.zero_grad(set_to_none=True)
                total.backward()
                _average_gradients(model, accelerator)
                opt.step()
                if disc is not None and "adv_g" in terms:
                    d_loss = losses.discriminator_loss(recon, batch)
                    opt_d.zero_grad(set_to_none=True)
                    d_loss.backward()
                    _average_gradients(disc, accelerator)
                    opt_d.step()
                    terms["adv_d"] = float(d_loss.detach())
                terms = _mean_terms(terms, accelerator)
                compute_s += time.perf_counter() - t0
                ran += 1
                if main:
                    curve.append(step + 1, terms)
                stop = flag.agreed(accelerator)
                if stop or (opts.checkpoint_every > 0 and ((step + 1) % opts.checkpoint_every == 0
                                                           or step + 1 == opts.steps)):
                    if main:
                        last_ckpt = _save_checkpoint(ckpt_root, step + 1, model, disc, opt, opt_d, gen,
                                                     opts.keep_checkpoints, fingerprint, paths.curve)
                    accelerator.wait_for_everyone()
                if on_step is not None:
                    on_step(step + 1, terms)
                if stop:
                    status = "preempted"
                    log.warning("signal %s received: checkpointed at step %d, stopping", flag.received or "(by a peer)",
                                step + 1)
                    break
    finally:
        if curve is not None:
            curve.close()

    model.eval()
    final_dir = stats = saved_stats = None
    if status == "completed" and main:
        final_dir = paths.final
        with atomic_dir(final_dir) as tmp:
            save_autoencoder(model, tmp)
        stats = latent_statistics(model, images if stats_images is None else stats_images, opts.stats_batch_size)
        saved_stats = save_latent_statistics(stats, stats_path)
    accelerator.wait_for_everyone()
    return {
        "status": status,
        "processes": world,
        "steps": opts.steps,
        "start_step": start,
        "seconds_per_step": compute_s / ran if ran > 0 else float("nan"),
        "last_terms": terms,
        "final_dir": str(final_dir) if final_dir is not None else None,
        "latent_stats": stats,
        "latent_stats_path": str(saved_stats) if saved_stats is not None else None,
        "loss_curve": str(paths.curve),
        "checkpoint": str(last_ckpt) if last_ckpt is not None else None,
    }
