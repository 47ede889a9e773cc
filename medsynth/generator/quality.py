"""MAISI's HU quality check applied to a sampling run: bounds from real slices, regeneration of failures.

Config ``sampling.hu_qc`` (CT condition sets only): ``enabled``, ``reference`` (the real slices whose
per-organ median HU give the bounds, e.g. the training split), ``method`` (``sigma``: mean +/- k std;
``percentile``; ``union``: the wider of the two, as MONAI's MAISI code), ``k``, ``percentiles``,
``max_tries``. A generated slice passes when the median HU of every organ of its conditioning mask
lies inside that organ's bounds (:func:`medsynth.sample.hu_qc.hu_check`); a failing slice is sampled
again from fresh noise (seed ``sampling.seed + attempt x 7919``) up to ``max_tries`` attempts in all.
The report records the first-attempt and final pass rates, the attempts per slice and, as the
reference's own yardstick, the pass rate of the real slices of the condition set.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from medsynth.generator.data import LatentData
from medsynth.train.data import TensorDictDataset

__all__ = ["hu_quality_check", "reference_bounds", "subset"]

log = logging.getLogger(__name__)

SEED_STRIDE = 7919


def subset(data: LatentData, indices: Sequence[int]) -> LatentData:
    """The conditions ``indices`` of ``data`` (same prompt table)."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    tensors = {k: v[idx] for k, v in data.dataset.tensors.items()}
    return replace(data, dataset=TensorDictDataset(tensors), index=data.index.iloc[idx.numpy()].reset_index(drop=True),
                   names=list(data.names))


def reference_bounds(shards: Sequence, reference: Mapping, hu_range: Sequence[float], qc_cfg: Mapping
                     ) -> tuple[dict[str, tuple[float, float]], int]:
    """The per-organ HU bounds of the real slices ``reference`` keeps (``sampling.hu_qc.reference``) and how
    many there are, read one shard at a time: each shard's per-slice organ medians, then the bounds of all
    (:func:`medsynth.sample.hu_qc.bounds_from_medians`; the same bounds as of all slices at once)."""
    from medsynth.io.trainsets import iter_slices
    from medsynth.metrics.windows import model_to_hu
    from medsynth.sample.hu_qc import bounds_from_medians, organ_medians

    hu = tuple(float(v) for v in hu_range)
    medians, names = [], None
    for _, images, masks, names in iter_slices(shards, reference):
        medians.append(organ_medians(model_to_hu(images, hu), masks > 0))
    if not medians:
        raise ValueError(f"sampling.hu_qc.reference {dict(reference)} keeps no slice of the training sets")
    med = np.concatenate(medians)
    return bounds_from_medians(med, list(names), method=str(qc_cfg["method"]), k=float(qc_cfg["k"]),
                               percentiles=tuple(qc_cfg["percentiles"])), len(med)


def hu_quality_check(model: nn.Module, objective: str, data: LatentData, vae: nn.Module, stats: dict, spec,
                     first: np.ndarray, masks: np.ndarray, names: Sequence[str],
                     bounds: Mapping[str, tuple[float, float]], real_images: np.ndarray, hu_range: Sequence[float],
                     qc_cfg: Mapping, real_masks: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Check ``first`` (generated, [-1, 1]) against the organ ``bounds`` (:func:`reference_bounds`) and
    regenerate failures; returns ``(images, report)``; the report's ``per_sample`` holds each slice's
    first-attempt pass, final pass, tries and its real slice's pass.

    ``qc_cfg``: the complete ``sampling.hu_qc`` section (:func:`medsynth.generator.sampling.sample_condition_set`
    fills in the schema's defaults). ``real_images`` (with ``real_masks``, default ``masks``) are the
    condition set's real slices, checked once as the yardstick.
    """
    from dataclasses import replace

    from medsynth.generator.integrate import generate
    from medsynth.metrics.windows import model_to_hu
    from medsynth.sample.hu_qc import hu_check, regenerate_until_pass

    hu = tuple(float(v) for v in hu_range)
    cond = torch.from_numpy(np.ascontiguousarray(masks))

    def check(images: torch.Tensor, idx: torch.Tensor):
        return hu_check(model_to_hu(images, hu), cond[idx], bounds, list(names))

    def regenerate(idx: torch.Tensor, attempt: int) -> torch.Tensor:
        if attempt == 0:
            return torch.from_numpy(first[idx.numpy()])
        again = generate(model, objective, subset(data, idx.tolist()), vae, stats,
                         replace(spec, seed=spec.seed + SEED_STRIDE * attempt))
        return torch.from_numpy(again.images)

    n = len(first)
    first_pass = check(torch.from_numpy(first), torch.arange(n))[0]
    images, passed, tries, rate = regenerate_until_pass(regenerate, check, n, int(qc_cfg["max_tries"]))
    real_cond = torch.from_numpy(np.ascontiguousarray(real_masks if real_masks is not None else masks))
    real_pass = hu_check(model_to_hu(torch.from_numpy(real_images.astype(np.float32)), hu), real_cond, bounds,
                         list(names))[0]
    report = {"enabled": True, "bounds": {k: [float(a), float(b)] for k, (a, b) in bounds.items()},
              "method": str(qc_cfg["method"]), "max_tries": int(qc_cfg["max_tries"]),
              "first_pass_rate": float(first_pass.float().mean()), "pass_rate": float(rate),
              "mean_tries": float(tries.float().mean()), "regenerated": int((tries > 1).sum()),
              "real_pass_rate": float(real_pass.float().mean()), "n": int(n),
              # per generated slice (the index CSV's hu_qc_* columns, the metrics' intervals), popped by the caller
              "per_sample": {"hu_qc_first_pass": first_pass.int().tolist(), "hu_qc_pass": passed.int().tolist(),
                             "hu_qc_tries": tries.int().tolist(), "hu_qc_real_pass": real_pass.int().tolist()}}
    log.info("HU quality check: %.3f pass at first, %.3f after up to %d tries (real slices %.3f)",
             report["first_pass_rate"], rate, report["max_tries"], report["real_pass_rate"])
    return images.numpy().astype(np.float32), report
