"""Rule ``calibration``'s entry: reference rows that put every model's FD and Dice on a scale.

The Frechet distance on a study's own encoder has no fixed scale, so each FD table needs its floor and
its ceiling measured with the same extractor on the same held-out slices (the ``eval`` condition set,
N slices) and the same sample count:

* ``real``: the held-out slices themselves: the re-segmenter's own Dice (FD 0 by construction);
* ``real: training slices``: N real training slices (``metrics.calibration.train_select``, drawn
  without replacement when there are enough) against the held-out slices: what real anatomy of other
  patients scores;
* ``VAE reconstruction``: the held-out slices through the study's tokenizer: the floor every decoded
  sample starts from;
* each of ``metrics.calibration.degradations``: the held-out slices blurred, noised, flipped or
  replaced by noise: the scale between floor and ceiling;
* ``real, shuffled masks``: the held-out slices scored against the masks of other slices: the Dice of
  images that do not follow their masks (no FD: the images are the real ones).

Each row has the FD (with its bootstrap interval over the held-out units, paired with the real rows
where the set is made from them), the re-segmentation Dice against the conditioning masks and, for
sets made from the held-out slices, SSIM / PSNR against them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medsynth.evaluation.extractor import SELF_EXTRACTOR, SegmenterEncoder
from medsynth.evaluation.intervals import IntervalSet
from medsynth.evaluation.records import pixel_spacing, write_metrics_json
from medsynth.io.trainsets import load_rows, read_index, select_rows
from medsynth.metrics.frechet import frechet_distance_lowrank
from medsynth.stats.bootstrap import bootstrap

__all__ = ["DEGRADATION_KINDS", "degrade", "run_calibration"]

log = logging.getLogger(__name__)

#: kind -> its parameters: blur (sigma, pixels), noise (sigma, on [-1, 1]), flip (upside down), uniform
DEGRADATION_KINDS = ("blur", "noise", "flip", "uniform")


def degrade(images: np.ndarray, spec: Mapping, rng: np.random.Generator) -> np.ndarray:
    """``images`` (``[N, 1, H, W]`` in [-1, 1]) degraded as ``spec`` says (``kind`` + its parameters)."""
    kind = spec["kind"]
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = float(spec["sigma"])
        return np.stack([gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest") for x in images])
    if kind == "noise":
        return np.clip(images + rng.normal(0.0, float(spec["sigma"]), images.shape), -1.0, 1.0).astype(np.float32)
    if kind == "flip":
        return images[..., ::-1, :].copy()
    if kind == "uniform":
        return rng.uniform(-1.0, 1.0, images.shape).astype(np.float32)
    raise ValueError(f"metrics.calibration.degradations: unknown kind {kind!r} (known: {', '.join(DEGRADATION_KINDS)})")


def _reconstructions(vae_dir: str | Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    from medsynth.vae.metrics import reconstruct_batched
    from medsynth.vae.models import load_autoencoder

    vae = load_autoencoder(vae_dir)
    return reconstruct_batched(vae, torch.from_numpy(images), batch_size).clamp(-1.0, 1.0).numpy()


def run_calibration(shards: Sequence[str], extractor_dir: str | Path, vae_dir: str | Path, out_json: str | Path,
                    metrics_cfg: Mapping, select: Mapping, statistics: Mapping, grid: Mapping,
                    slice_size: int) -> dict:
    """The calibration record (module docstring), written to ``out_json``; ``select``: the ``eval`` set."""
    from medsynth.downstream import load_segmenter, predict_masks
    from medsynth.metrics import (
        extract_features,
        frechet_distance,
        image_metric_values,
        mask_metric_values,
        register_module_extractor,
    )
    from medsynth.settings import section

    torch.set_num_threads(1)
    metrics_cfg = section("metrics", metrics_cfg)
    cfg = metrics_cfg["calibration"]
    index = read_index(shards)  # the CSVs only: the tensors of the rows used are read below
    rows = select_rows(index, select)
    n = len(rows)
    rng = np.random.default_rng(int(cfg["seed"]))
    train_rows = select_rows(index, cfg["train_select"])
    if len(train_rows) > n:  # drawn among the positions of the whole index, before anything else draws
        train_rows = np.sort(rng.choice(train_rows, n, replace=False))
    needed = np.union1d(rows, train_rows)
    _, images, masks, _ = load_rows(shards, needed, index)
    held_out, train_part = np.searchsorted(needed, rows), np.searchsorted(needed, train_rows)
    real, ref = images[held_out].astype(np.float32), torch.from_numpy(masks[held_out] > 0)
    segmenter = load_segmenter(extractor_dir)
    extractor = register_module_extractor(SELF_EXTRACTOR, SegmenterEncoder(segmenter))
    batch = int(metrics_cfg["batch_size"])
    spacing = pixel_spacing(grid, slice_size)
    intervals = IntervalSet(index.iloc[rows], section("statistics", statistics))

    sets = {"real: training slices": (images[train_part].astype(np.float32), False,
                                      f"{len(train_rows)} real slices of {cfg['train_select']}"),
            "VAE reconstruction": (_reconstructions(vae_dir, real, batch), True, "the held-out slices through the VAE")}
    for name, spec in cfg["degradations"].items():
        sets[name] = (degrade(real, spec, rng), True, f"the held-out slices, {spec}")
    # one feature pass over the held-out slices and every reference set
    features = extract_features([(x + 1) / 2 for x in (real, *(v[0] for v in sets.values()))], extractor,
                                batch_size=batch)
    real_f = features[0]
    out_rows = []
    for (name, (fake, paired, what)), fake_f in zip(sets.items(), features[1:]):
        if paired:
            est = intervals.frechet(f"{name}/fd_self", real_f, fake_f)
        else:  # other slices: the held-out side is resampled, the reference set stays as drawn
            real64, other64 = (np.asarray(f, np.float64) for f in (real_f, fake_f))
            est = intervals.add(f"{name}/fd_self", bootstrap(
                lambda r: frechet_distance_lowrank(real64[r], other64), n, intervals.draws, intervals.settings.level))
        row = {"name": name, "what": what, "n": int(len(fake)), "fd_self": frechet_distance(real_f, fake_f),
               "fd_self_interval": [est.low, est.high]}
        if paired:
            values = mask_metric_values(predict_masks(segmenter, fake), ref, spacing)
            row["dice"] = intervals.means(f"{name}/dice", values["dice"].numpy()).value
            pairs = image_metric_values(torch.from_numpy(fake), torch.from_numpy(real))
            row.update({k: intervals.means(f"{name}/{k}", pairs[k]).value for k in ("ssim", "psnr")})
        out_rows.append(row)
    pred_real = predict_masks(segmenter, real)
    values = mask_metric_values(pred_real, ref, spacing)
    out_rows.insert(0, {"name": "real", "what": "the held-out slices themselves (the re-segmenter's own Dice)", "n": n,
                        "dice": intervals.means("real/dice", values["dice"].numpy()).value})
    shuffled = ref[torch.from_numpy(rng.permutation(n))]
    values = mask_metric_values(pred_real, shuffled, spacing)
    out_rows.append({"name": "real, shuffled masks", "what": "the held-out slices against the masks of other "
                     "held-out slices", "n": n, "dice": intervals.means("real, shuffled masks/dice",
                                                                          values["dice"].numpy()).value})
    record = {"n_real": n, "rows": out_rows, "extractor": f"self-trained {segmenter.segmenter_record['model']['type']}"
              f" encoder, downstream '{Path(extractor_dir).parent.name}'", **intervals.record()}
    write_metrics_json(out_json, record)
    log.info("calibration: %s", {r["name"]: round(r.get("fd_self", float("nan")), 4) for r in out_rows})
    return record
