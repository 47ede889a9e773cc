"""Counterfactual and progressive condition sets: real slices edited towards a changed condition (SDEdit).

* ``edit: {strength, severity, add_channels, remove_channels}`` - ViCTr's counterfactual pathology
  synthesis (Fig. 3: "synthetic cirrhotic images with different severity levels generated from
  non-cirrhotic scans"; Fig. 8: mild / moderate / severe). Each real slice's latent (encoded and
  z-normalised like the training data) is re-noised to ``t = strength`` with the set's seeded noise and
  integrated to ``t = 0`` under the new condition (:func:`medsynth.sample.edit.sdedit_euler`). The new
  condition: the real masks with ``remove_channels`` switched off (all background) and ``add_channels``
  switched on - a slice whose own mask lacks the channel takes that channel from the slice of the set
  where it is largest (our choice; the papers do not say where an added region comes from); the
  compound prompt's organ list follows the new mask and its severity phrase is ``severity``
  (null: the source slice's grade is kept).
* ``progressive: {strength, stages}`` - MedSyn2 Fig. 5 ("We start by generating healthy images with lobes
  only. Progressively, we add a pleural effusion mask and a nodule mask"): stage 1 samples from noise with
  only the first stage's channels (the others all background); each next stage re-noises the previous
  stage's latents to ``strength`` with the SAME noise ("fix the same random seed and add noise again")
  and integrates under its own channels. Every stage's images are kept (rows stage by stage, column
  ``stage``).

Both sample with ``euler-<steps>`` only (the edit's time grid is Euler's, truncated at ``strength``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.generator.conditioning import encode_conditions
from medsynth.generator.data import LatentData
from medsynth.generator.loaders import prompt_settings, report_settings
from medsynth.models.prompts import SEVERITY_WORDS, severity_word
from medsynth.train.data import TensorDictDataset

__all__ = ["edited_masks", "stage_masks", "relabel", "edit_conditions", "progressive_latents"]

log = logging.getLogger(__name__)


def _channel_ids(names: Sequence[str], channels: Sequence[str] | None, key: str) -> list[int]:
    missing = [c for c in (channels or []) if c not in names]
    if missing:
        raise KeyError(f"{key} {missing} are not condition channels ({list(names)})")
    return [list(names).index(c) for c in (channels or [])]


def edited_masks(masks: np.ndarray, names: Sequence[str], add_channels: Sequence[str] | None = None,
                 remove_channels: Sequence[str] | None = None) -> np.ndarray:
    """The counterfactual masks (module docstring) of binary ``masks`` ``(N, C, *spatial)``."""
    new = np.asarray(masks, dtype=bool).copy()
    add = _channel_ids(names, add_channels, "edit.add_channels")
    remove = _channel_ids(names, remove_channels, "edit.remove_channels")
    if set(add) & set(remove):
        raise ValueError("edit.add_channels and edit.remove_channels share a channel")
    for c in remove:
        new[:, c] = False
    for c in add:
        area = new[:, c].reshape(len(new), -1).sum(axis=1)
        if not area.any():
            raise ValueError(f"edit.add_channels: no slice of the set has channel {names[c]!r} to take it from")
        donor = int(np.argmax(area))
        lacking = area == 0
        new[lacking, c] = new[donor, c]
    return new


def stage_masks(masks: np.ndarray, names: Sequence[str], channels: Sequence[str]) -> np.ndarray:
    """Binary ``masks`` with every channel not in ``channels`` switched off (one progressive stage)."""
    keep = _channel_ids(names, channels, "progressive.stages")
    new = np.zeros_like(np.asarray(masks, dtype=bool))
    new[:, keep] = np.asarray(masks, dtype=bool)[:, keep]
    return new


def _source_grades(index) -> np.ndarray:
    words = index["severity"].fillna("").astype(str) if "severity" in index else [""] * len(index)
    return np.array([SEVERITY_WORDS.index(w) if w in SEVERITY_WORDS else -1 for w in words], dtype=np.int64)


def relabel(data: LatentData, new_masks: np.ndarray, gen_cfg: Mapping, severity_prompt: bool, text_encoder,
            severity: str | int | None = None, latent: torch.Tensor | None = None) -> LatentData:
    """``data`` with binary masks ``new_masks`` (organ lists of the prompts recomputed), the severity phrase
    ``severity`` (None: each row's own grade) and, when given, other source ``latent``s."""
    index = data.index.copy()
    names = list(data.names)
    index["organs"] = [json.dumps([n for c, n in enumerate(names) if m[c].any()]) for m in new_masks]
    prompts_cfg = prompt_settings(gen_cfg)
    grades = None
    if severity is not None:
        if not severity_prompt:
            raise ValueError("edit.severity writes a grade into the prompt: the model must be trained with "
                             "severity prompts (severity_prompt: true)")
        word = severity_word(severity)
        grades = np.full(len(index), SEVERITY_WORDS.index(word), dtype=np.int64)
        index["severity"] = word
    elif severity_prompt:
        grades = _source_grades(index)
    table = encode_conditions(index, grades, prompts_cfg["severity"]["pathology"], text_encoder,
                              int(prompts_cfg["max_length"]), report_settings(prompts_cfg))
    source = data.dataset.tensors["latent"] if latent is None else latent
    mask = F.interpolate(torch.from_numpy(new_masks.astype(np.float32) - 0.5), size=tuple(source.shape[2:]),
                         mode="area")
    dataset = TensorDictDataset({"latent": source, "mask": mask.contiguous(),
                                 "prompt": torch.as_tensor(table.ids, dtype=torch.long)})
    index = index.assign(prompt=[table.prompts[i] for i in table.ids])
    return LatentData(dataset, table.prompts, table.tokens, table.keep, index, names, table.pooled,
                      report_start=table.report_start)


def edit_conditions(data: LatentData, masks: np.ndarray, edit: Mapping, gen_cfg: Mapping, severity_prompt: bool,
                    text_encoder) -> tuple[LatentData, np.ndarray]:
    """The counterfactual conditions of a set's real slices: ``(data, new binary masks)``; the index records
    the source case / slice / prompt and the strength."""
    new = edited_masks(masks > 0, data.names, edit.get("add_channels"), edit.get("remove_channels"))
    edited = relabel(data, new, gen_cfg, severity_prompt, text_encoder, edit.get("severity"))
    source = data.index
    edited.index = edited.index.assign(source_case=source["case_id"].to_numpy(),
                                       source_slice=source["slice"].to_numpy() if "slice" in source else -1,
                                       source_prompt=source["prompt"].to_numpy(), strength=float(edit["strength"]))
    return edited, new


def progressive_latents(model, objective: str, data: LatentData, masks: np.ndarray, progressive: Mapping,
                        gen_cfg: Mapping, severity_prompt: bool, text_encoder, spec
                        ) -> tuple[list[torch.Tensor], list[LatentData], list[np.ndarray], int, float]:
    """MedSyn2 Fig. 5's stages (module docstring): per stage its latents, conditions and binary masks, and
    the total NFE and seconds."""
    from medsynth.generator.integrate import integrate_latents

    stages = [list(s) for s in progressive["stages"]]
    if not stages:
        raise ValueError("progressive.stages is empty")
    latents, datas, stage_binary, nfe, seconds = [], [], [], 0, 0.0
    previous = None
    for k, channels in enumerate(stages):
        binary = stage_masks(masks > 0, data.names, channels)
        stage_data = relabel(data, binary, gen_cfg, severity_prompt, text_encoder, latent=previous)
        stage_data.index = stage_data.index.assign(stage=k + 1, stage_channels=json.dumps(channels),
                                                   strength=1.0 if k == 0 else float(progressive["strength"]))
        stage_spec = replace(spec, edit={} if k == 0 else {"strength": float(progressive["strength"])})
        x0, _, stage_nfe, stage_seconds = integrate_latents(model, objective, stage_data, stage_spec)
        log.info("progressive stage %d/%d (%s): %d NFE", k + 1, len(stages), ", ".join(channels), stage_nfe)
        latents.append(x0)
        datas.append(stage_data)
        stage_binary.append(binary)
        nfe, seconds, previous = nfe + stage_nfe, seconds + stage_seconds, x0
    return latents, datas, stage_binary, nfe, seconds
