"""New conditions from MedDiff-FT's stochastic mask generator (:func:`medsynth.sample.meddiff.stochastic_masks`).

A condition set whose selection carries ``stochastic_masks: {seed, max_union, p_perturb, max_shift,
max_dilate}`` keeps its real slices' prompt fields (modality, region, phase) but replaces every mask
by a generated one (weighted random unions of real masks with random shifts and dilations/erosions);
the organ list and the severity grade of the compound prompt are recomputed from the new mask, so the
prompt describes what the model is asked to draw (a grade read from case metadata, ``severity.from_field``,
stays the case's; a report, ``generator.report``, stays the case's). The synthetic images sampled from these
conditions are labelled with the new masks (the downstream segmentation's MedDiff-FT settings).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.generator.conditioning import encode_conditions
from medsynth.generator.data import LatentData, slice_grades
from medsynth.generator.loaders import prompt_settings, report_settings
from medsynth.settings import section
from medsynth.train.data import TensorDictDataset

__all__ = ["mask_generator_options", "stochastic_conditions"]

_OPTIONS = ("max_union", "p_perturb", "max_shift", "max_dilate")


def mask_generator_options(cfg: Mapping | None) -> dict:
    """A condition set's ``stochastic_masks`` options with the schema's defaults of those left out (validated)."""
    sets = section("sampling", {"condition_sets": {"set": {"stochastic_masks": dict(cfg or {})}}})["condition_sets"]
    return sets["set"]["stochastic_masks"]


def stochastic_conditions(data: LatentData, masks: np.ndarray, names: Sequence[str], cfg: Mapping,
                          gen_cfg: Mapping, severity_prompt: bool, text_encoder) -> tuple[LatentData, np.ndarray]:
    """``data`` with every mask replaced by a stochastic one (module docstring); returns ``(data, masks)``.

    ``masks``: the selected real slices' binary masks ``(N, C, H, W)``; the result has as many
    conditions as ``data``. ``cfg``: the set's ``stochastic_masks`` options and ``gen_cfg`` config ``generator``
    (its ``severity`` and ``max_length``); keys left out take the schema's defaults.
    """
    from medsynth.sample.meddiff import stochastic_masks

    cfg = mask_generator_options(cfg)
    real = torch.from_numpy(np.ascontiguousarray(masks > 0))
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    new = stochastic_masks(real, len(real), gen, **{k: cfg[k] for k in _OPTIONS}).numpy().astype(bool)
    index = data.index.copy()
    index["organs"] = [json.dumps([n for c, n in enumerate(names) if new[i, c].any()]) for i in range(len(new))]
    grades = None
    prompts_cfg = prompt_settings(gen_cfg)
    severity = prompts_cfg["severity"]
    if severity_prompt:  # the new mask's area grade; a metadata grade (severity.from_field) is the case's
        grades, columns = slice_grades(index, new.astype(np.float32), names, severity)
        for column, values in columns.items():
            index[column] = values
    table = encode_conditions(index, grades, severity["pathology"], text_encoder, int(prompts_cfg["max_length"]),
                              report_settings(prompts_cfg))
    latent = data.dataset.tensors["latent"]
    mask = F.interpolate(torch.from_numpy(new.astype(np.float32) - 0.5), size=tuple(latent.shape[2:]), mode="area")
    dataset = TensorDictDataset({"latent": latent, "mask": mask.contiguous(),
                                 "prompt": torch.as_tensor(table.ids, dtype=torch.long)})
    index = index.assign(prompt=[table.prompts[i] for i in table.ids])
    return LatentData(dataset, table.prompts, table.tokens, table.keep, index, list(names), table.pooled,
                      report_start=table.report_start), new
