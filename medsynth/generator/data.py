"""Latent training data of the generator: shards -> z-normalised VAE latents + masks + text tokens.

One sample = one 2D slice, or one 3D volume, of a training-set shard (:mod:`medsynth.preprocess.trainsets`:
``trainsets/slices`` or ``trainsets/volumes``; every function here works on ``(N, C, *spatial)``):

* ``latent``: posterior mean of the slice under the tuned VAE, z-normalised per channel with the
  VAE's ``latent_stats.json`` (MedSyn2 Sec. 3);
* ``mask``: the condition-mask channels ([-0.5, 0.5]) area-resized to the latent grid, concatenated to
  the noisy latent by the backbone (ViCTr Sec. 3.3 ``[Z_t, Z_s]``);
* ``prompt``: index into a table of unique compound prompts (MedSyn2 Sec. 3.2,
  :func:`medsynth.models.prompts.compound_prompt`): ``<modality>; segmentation of <organs present>;
  [<severity> <pathology>;] <region>[, <contrast phase>]``; each unique prompt is encoded once by the
  text encoder. The table's last row is the empty prompt (classifier-free-guidance null condition).

Graded severity (the embedded study's target task): the grade of a slice is a measurable property
of its own mask: the fraction of the slice's pixels inside condition channel ``severity.organ``
(config ``generator.severity``), binned with ``severity.thresholds`` ``[t0, t1]`` into ``low`` (f < t0), ``mild``
(t0 <= f < t1) and ``severe`` (f >= t1) (ViCTr's low/mild/severe words). A generated slice's grade can
later be measured the same way on its re-segmented mask, so prompt control is checkable. With
``severity.from_field`` the grade is instead the case's metadata value (``prompt_<field>`` mapped by
``severity.levels``, :func:`medsynth.generator.conditioning.metadata_grades`); a case without one gets no
severity phrase.

Report conditioning (``generator.report``, MedSyn2) and the prompts' no-mask variants (``mask_dropout``):
:mod:`medsynth.generator.conditioning`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medsynth.generator.conditioning import encode_conditions, metadata_grades, prompt_table, slice_prompts
from medsynth.models.prompts import SEVERITY_WORDS
from medsynth.io.trainsets import iter_slices, load_slices, select_rows, shard_condition_names
from medsynth.train.data import TensorDictDataset
from medsynth.vae.latents import LatentEncoder, latent_size

__all__ = [
    "DEFAULT_SEVERITY",
    "LatentData",
    "prompt_table",
    "shard_condition_names",
    "load_slices",
    "select_rows",
    "severity_fractions",
    "severity_grades",
    "slice_grades",
    "slice_prompts",
    "build_latent_data",
]


def __getattr__(name: str):
    """``DEFAULT_SEVERITY``: the schema's ``generator.severity`` defaults (``{organ, thresholds, pathology}``),
    read from config/schema.yaml when first asked for; the schema is their one home."""
    if name == "DEFAULT_SEVERITY":
        from medsynth.settings import section

        return section("generator")["severity"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def severity_fractions(masks: np.ndarray, names: Sequence[str], organ: str) -> np.ndarray:
    """Fraction of each slice's pixels inside condition channel ``organ`` (masks in [-0.5, 0.5])."""
    if organ not in names:
        raise KeyError(f"severity.organ = {organ!r} is not a condition channel ({list(names)})")
    channel = np.asarray(masks)[:, list(names).index(organ)]
    return (channel > 0).reshape(len(channel), -1).mean(axis=1)


def severity_grades(fractions: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Grade 0 (low) / 1 (mild) / 2 (severe): ``f < t0``, ``t0 <= f < t1``, ``f >= t1``."""
    t = [float(v) for v in thresholds]
    if len(t) != len(SEVERITY_WORDS) - 1 or not t[0] < t[1]:
        raise ValueError(f"severity.thresholds must be two increasing numbers, got {list(thresholds)}")
    return np.digitize(np.asarray(fractions, dtype=np.float64), t, right=False).astype(np.int64)


def slice_grades(index: pd.DataFrame, masks: np.ndarray, names: Sequence[str], severity: Mapping
                 ) -> tuple[np.ndarray, dict]:
    """``(grades, columns)``: each row's grade (0 low, 1 mild, 2 severe; -1 none) under a ``generator.severity``
    section, and the index columns that record it (``severity_fraction`` for the mask-area grade,
    ``severity``: the word, "" where none)."""
    field = severity.get("from_field")
    if field:
        grades = metadata_grades(index, field, severity.get("levels"))
        return grades, {"severity": [SEVERITY_WORDS[g] if g >= 0 else "" for g in grades]}
    fractions = severity_fractions(masks, names, severity["organ"])
    grades = severity_grades(fractions, severity["thresholds"])
    return grades, {"severity_fraction": fractions, "severity": [SEVERITY_WORDS[g] for g in grades]}


@dataclass
class LatentData:
    """A stage's training data: ``dataset`` (``latent``, ``mask``, ``prompt``) + the prompt token table."""

    dataset: TensorDictDataset
    prompts: list[str]
    tokens: torch.Tensor  # (P + 1, L, D); row P is the empty prompt
    keep: torch.Tensor  # (P + 1, L) bool
    index: pd.DataFrame  # the selected rows, with prompt, severity columns
    names: list[str] = field(default_factory=list)  # the condition channels of ``mask``
    pooled: torch.Tensor | None = None  # (P + 1, pooled_dim): SDXL / SD3 / Flux text encoders' pooled vectors
    #: (P + 1,) long: each prompt's id with the mask pre-prompt replaced (``mask_dropout``); None: not built
    no_mask: torch.Tensor | None = None
    #: first token of the report part (``generator.report``); None: the prompts have no report part
    report_start: int | None = None

    @property
    def null_id(self) -> int:
        return len(self.prompts)


def build_latent_data(shards: Sequence[str | Path], vae: torch.nn.Module, stats: dict, text_encoder,
                      select: Mapping[str, Sequence] | None = None, severity: Mapping | None = None,
                      max_length: int = 32, batch_size: int = 32, *,
                      slices: tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]] | None = None,
                      report: Mapping | None = None, mask_variants: bool = False,
                      inpainting: Mapping | None = None) -> LatentData:
    """Latent dataset of the selected slices (see module docstring).

    ``severity``: ``None`` (no severity phrase) or the complete ``generator.severity`` section
    (``{"organ", "thresholds", "pathology"}``, optionally ``from_field`` / ``levels``). ``slices``:
    what :func:`load_slices` returned for ``shards``, or any rows of it in index order that hold those
    ``select`` keeps (:func:`medsynth.io.trainsets.load_rows` of sorted positions), when the caller has read
    them already; ``select`` picks its rows from them, as from all. ``report``:
    the ``generator.report`` section when enabled (else ``None``); ``mask_variants``: also encode each
    prompt's no-mask variant (for ``mask_dropout``; :mod:`medsynth.generator.conditioning`). ``inpainting``:
    the ``generator.inpainting_inputs`` section; when enabled the dataset also holds ``context``, each slice's
    ``[inpainting mask; masked-image latent]`` (:mod:`medsynth.generator.inpainting`).
    """
    # shard by shard (one shard's images in memory at a time), unless the caller read the slices already
    if slices is not None:
        rows = select_rows(slices[0], select)
        parts = [(slices[0].iloc[rows].reset_index(drop=True), slices[1][rows], slices[2][rows], slices[3])]
    else:
        parts = iter_slices(shards, select)
    encoder, size = LatentEncoder(vae, stats, batch_size), None
    context = None
    if inpainting is not None and inpainting.get("enabled"):
        from medsynth.generator.inpainting import ContextBuilder

        context = ContextBuilder(vae, stats, batch_size, inpainting.get("channels"))
    indices, masks_lat, grade_parts, names = [], [], [], []
    for index, images, masks, names in parts:
        if not len(index):
            continue
        size = size or latent_size(vae, images[:1])
        encoder.add(images)
        if context is not None:
            context.add(images, masks, names)
        masks_lat.append(F.interpolate(torch.as_tensor(masks, dtype=torch.float32), size=size, mode="area"))
        if severity is not None:
            grade_parts.append(slice_grades(index, masks, names, severity))
        indices.append(index)
    if not indices:
        raise ValueError(f"select {dict(select or {})} keeps no slice of the training sets")
    index, latent, mask = pd.concat(indices, ignore_index=True), encoder.latents(), torch.cat(masks_lat)
    grades = None
    if severity is not None:
        grades = np.concatenate([g for g, _ in grade_parts])
        index = index.assign(**{k: np.concatenate([np.asarray(c[k], dtype=object if k == "severity" else None)
                                                    for _, c in grade_parts]) for k in grade_parts[0][1]})
    table = encode_conditions(index, grades, severity["pathology"] if severity is not None else None, text_encoder,
                              max_length, report, mask_variants)
    index = index.assign(prompt=[table.prompts[i] for i in table.ids])
    tensors = {"latent": latent, "mask": mask.contiguous(), "prompt": torch.as_tensor(table.ids, dtype=torch.long)}
    if context is not None:
        tensors["context"] = context.context()
    dataset = TensorDictDataset(tensors)
    return LatentData(dataset, table.prompts, table.tokens, table.keep, index, list(names), table.pooled,
                      table.no_mask, table.report_start)
