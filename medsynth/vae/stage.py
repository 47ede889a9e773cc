"""Rule ``vae``'s entry: tune the VAE on the training set (MedSyn2 Supp. 7.1.1, 7.3).

:func:`run_vae` tunes the 2D VAE on the training slices (and, with ``include_masks``, their mask
channels as single-channel images, MedSyn2 Supp. 7.1.1), or with ``vae.model`` the 3D MAISI config
(``spatial_dims: 3``) on whole volumes, and writes the final model, ``latent_stats.json`` (statistics of
the *image* latents), the loss curve and the reconstruction table (SSIM/PSNR of the images and
Dice/Jaccard/HD95/ASD per mask channel of the ``eval_split`` slices, MedSyn2 Table 6). ``steps: 0``
freezes a pretrained VAE (ViCTr, MAISI-v2: used as released): no tuning, the same outputs (a loss curve
without rows).

Memory (a published training set is terabytes): the shards are read with a ``split`` select, never all
at once. A frozen VAE holds no training images: the statistics stream the ``train_split`` samples shard
by shard (:func:`medsynth.io.trainsets.iter_slices`, batched across the shards' boundaries: the same
statistics, bit for bit, as of all of them at once). Tuning holds no training images either: its fit set
(the ``train_split`` samples, + their non-empty mask channels with ``include_masks``) is a
:class:`medsynth.io.shard_dataset.ShardDataset`, the index in memory and each step's batch (drawn at random
from the whole set by :func:`medsynth.vae.tune_vae`) read from the shards, item for item the in-memory set's
(the same runs, bit for bit; the run's fingerprint streams the set's bytes); the statistics stream its images
block by block. The reconstruction table holds the ``eval_split`` samples only (the training samples when that
split has none: then they are read with a ``train_split`` select).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medsynth.fsutil import write_csv_atomic
from medsynth.io.shard_dataset import ShardDataset
from medsynth.io.trainsets import Slices, iter_slices, join_slices, load_slices
from medsynth.launch import is_main_process, set_threads
from medsynth.train.config import TrainOutputs
from medsynth.train.seeding import derive_seed
from medsynth.train.signals import PREEMPTED_EXIT_CODE
from medsynth.vae.metrics import reconstruction_metrics
from medsynth.vae.models import build_autoencoder, vae_section
from medsynth.vae.tune import TuneConfig, tune_vae

__all__ = ["VAEOutputs", "run_vae"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VAEOutputs:
    """What rule ``vae`` declares: the tuning run's files (``train.final``, ``train.curve``; its
    checkpoints folder beside them), the latent statistics and the reconstruction table."""

    train: TrainOutputs
    stats: Path
    reconstruction: Path

    @classmethod
    def under(cls, folder: str | Path) -> "VAEOutputs":
        """``final/``, ``loss_curve.csv``, ``latent_stats.json``, ``reconstruction.csv`` in ``folder``."""
        folder = Path(folder)
        return cls(TrainOutputs.under(folder), folder / "latent_stats.json", folder / "reconstruction.csv")

    @classmethod
    def of(cls, where: "VAEOutputs | str | Path") -> "VAEOutputs":
        """``where`` itself, or the layout of the folder it names."""
        return where if isinstance(where, VAEOutputs) else cls.under(where)


def _mask_images(masks: np.ndarray) -> np.ndarray:
    """Non-empty mask channels as single-channel images in [-0.5, 0.5] (MedSyn2 encodes masks with the VAE): the
    in-memory form of a :class:`ShardDataset`'s mask items (``include_masks``)."""
    flat = masks.reshape(-1, 1, *masks.shape[2:])
    return flat[(flat > 0).reshape(len(flat), -1).any(axis=1)]


def _streamed_images(shards: Sequence[str], split: str) -> Iterator[np.ndarray]:
    """The ``split`` samples' images, one shard at a time (:func:`iter_slices`); a ValueError if none."""
    empty = True
    for _, images, _, _ in iter_slices(shards, {"split": [split]}):
        empty = False
        yield images
    if empty:
        raise ValueError(f"no {split} slices in the training-set shards")


def _eval_slices(shards: Sequence[str], split: str, train_split: str) -> Slices:
    """The ``split`` samples (``load_slices(shards, {"split": [split]})``: :func:`join_slices` of the shards'
    parts, only the selected rows read), or with none (no error) the ``train_split`` samples."""
    loaded = join_slices(iter_slices(shards, {"split": [split]}))
    if loaded is not None:
        return loaded
    log.warning("no %s slices: reconstruction metrics on the training slices", split)
    return load_slices(shards, {"split": [train_split]})


def reconstruction_intervals(test_index: pd.DataFrame, values: Mapping, names: Sequence[str],
                             statistics: Mapping | None) -> dict[str, dict]:
    """``{target: {"<metric>_low", "<metric>_high", "interval"}}``: bootstrap intervals (over the test patients,
    :mod:`medsynth.stats`) of the reconstruction table's image and per-channel mask metrics."""
    from medsynth.settings import section
    from medsynth.stats import BootstrapSettings, bootstrap_means, resampling_units

    settings = BootstrapSettings.from_config(section("statistics", statistics or {})["bootstrap"])
    units = resampling_units(test_index.reset_index(drop=True), settings)
    draws = units.draws(settings.resamples, settings.seed)
    how = (f"{100 * settings.level:g} % percentile bootstrap interval, {settings.resamples} resamples of the test "
           f"{units.unit}")
    out: dict[str, dict] = {"image": {"interval": how}}
    for key in ("ssim", "psnr", "l1"):
        est = bootstrap_means(values["image"][key], draws, settings.level)
        out["image"].update({f"{key}_low": est.low, f"{key}_high": est.high})
    for c, name in enumerate(names if values["masks"] is not None else ()):
        out[name] = {"interval": how}
        for key in ("dice", "jaccard", "hd95", "asd"):
            est = bootstrap_means(values["masks"][key][:, c].numpy(), draws, settings.level)
            out[name].update({f"{key}_low": est.low, f"{key}_high": est.high})
    return out


def run_vae(shards: Sequence[str], outputs: VAEOutputs | str | Path, vae_cfg: Mapping,
            statistics: Mapping | None = None) -> dict:
    """Tune the VAE (module docstring) and write ``outputs`` (:class:`VAEOutputs`, or a folder with that
    layout); returns :func:`medsynth.vae.tune_vae`'s summary + the reconstruction metrics.

    ``vae_cfg``: config ``vae`` (2D slices) or ``volumes.vae`` (volumes); keys left out take that
    section's schema defaults (:func:`medsynth.vae.models.vae_section`). ``statistics``: config
    ``statistics`` (the reconstruction table's intervals)."""
    vae_cfg = vae_section(vae_cfg)
    set_threads(vae_cfg)
    outputs = VAEOutputs.of(outputs)
    train_split = vae_cfg["train_split"]
    frozen = int(vae_cfg["steps"]) == 0
    fit = None
    if frozen:  # nothing to fit: the statistics stream the training shards (module docstring)
        stats_images = _streamed_images(shards, train_split)
    else:  # the fit set read on demand (tune_vae samples its batches from all of it); the statistics: its images
        fit = ShardDataset(shards, {"split": [train_split]}, include_masks=bool(vae_cfg["include_masks"]))
        stats_images = fit.blocks(0, fit.n_images)
    tune_keys = {f.name for f in fields(TuneConfig)}
    tune_cfg = {k: v for k, v in vae_cfg.items() if k in tune_keys}
    torch.manual_seed(derive_seed(int(vae_cfg["seed"]), "init"))  # the weights' initialisation is seeded too
    model = build_autoencoder(vae_cfg["model"])
    # z-norm statistics of the *image* latents (the generator's data), not of the mask images
    summary = tune_vae(model, fit, tune_cfg, outputs.train, stats_path=outputs.stats, stats_images=stats_images)
    del fit, stats_images  # the fit set's index and open shard files are not needed any more
    if summary["status"] != "completed":
        raise SystemExit(PREEMPTED_EXIT_CODE)  # checkpoint written, the job is requeued / rerun
    if not is_main_process():
        return summary  # a worker of a multi-process run: the main process writes the outputs

    split = vae_cfg["eval_split"]
    index, images, masks, names = _eval_slices(shards, split, train_split)
    metrics = reconstruction_metrics(model, images, masks, mask_names=names,
                                     batch_size=int(vae_cfg["stats_batch_size"]), return_values=True)
    intervals = reconstruction_intervals(index, metrics.pop("values"), names, statistics)
    rows = [{"target": "image", "split": split, **metrics["image"], **intervals["image"]}]
    for name, m in metrics["masks"].items():
        rows.append({"target": name, "split": split, "n": m["n_reference"], **m, **intervals.get(name, {})})
    bounds = [f"{k}_{side}" for k in ("ssim", "psnr", "l1", "dice", "jaccard", "hd95", "asd") for side in ("low", "high")]
    table = pd.DataFrame(rows).reindex(columns=["target", "split", "n", "ssim", "psnr", "l1", "dice", "jaccard",
                                                "hd95", "asd", "n_reference", "n_pred_empty", "status", *bounds,
                                                "interval"])
    write_csv_atomic(table, outputs.reconstruction)
    summary["reconstruction"] = metrics
    log.info("vae: %.4f s/step; reconstruction %s", summary["seconds_per_step"], metrics["image"])
    return summary
