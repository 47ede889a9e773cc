"""The text conditions of the generator's samples: compound prompts, their token table, MedSyn2's report
conditioning and graded severity read from case metadata.

* :func:`slice_prompts` - the compound prompt of every index row (:mod:`medsynth.generator.data`): the
  pre-prompt ``[modality; ] <mask pre-prompt> [; <severity> <pathology>] [; <region>[, <phase>]]``.
* :func:`report_texts` - MedSyn2's radiology report ``c_r`` per row (config ``generator.report``): the
  ``prompt_<field>`` columns of ``fields``, non-empty ones joined by the text encoder's separator token
  (MedSyn2 Sec. 4.2 / Supp. 7.1 put ``<SEP>`` between findings and impressions; BERT tokenizers such as
  CXR-BERT's and MiniLM's read ``[SEP]`` as that token).
* :func:`encode_conditions` - the prompt id of every row and the token table of the unique prompts, the
  null condition last. With ``report`` the pre-prompt and the report are encoded SEPARATELY (pre-prompt
  padded / truncated to ``pre_prompt_length``, report to ``report_length``) and concatenated along the
  token axis (:meth:`medsynth.models.text._PromptCache.encode_compound`; MedSyn2's 32 + 512 = 544 tokens);
  a row without a report has its report positions zeroed and masked. Reports longer than
  ``report_length`` are truncated and counted in the log, never silently. The pooled vector (SDXL / SD3 /
  Flux encoders) is the pre-prompt's. With ``mask_variants`` the table also holds every prompt with its
  mask pre-prompt replaced by "no image segmentation is provided" (``no_mask``: prompt id -> that
  variant's id), the text the model sees when training drops the mask (``mask_dropout``).
* :func:`metadata_grades` - ViCTr's low / mild / severe grade (Sec. 3.3) of each row from a metadata field
  (``generator.severity.from_field``, values mapped by ``levels``) instead of the mask's area.

Without ``report`` and ``mask_variants`` the prompts and the table are what they always were: the unique
compound prompts in order of first appearance, each encoded at ``generator.max_length``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from medsynth.models.prompts import SEVERITY_WORDS, compound_prompt, mask_preprompt, severity_word

__all__ = ["PromptTable", "REPORT_SEP", "encode_conditions", "metadata_grades", "prompt_table", "report_texts",
           "slice_prompts"]

log = logging.getLogger(__name__)

#: how a prompt with a report is shown (prompts.csv, the index): MedSyn2's pre-prompt <SEP> report
REPORT_SEP = " <SEP> "


def _region(row: Mapping) -> str:
    parts = [str(row.get("prompt_region", "") or "").strip()]
    contrast = str(row.get("prompt_contrast", "") or "").strip()
    if contrast and contrast.lower() != "none":
        parts.append(f"{contrast} phase")
    return ", ".join(p for p in parts if p)


def slice_prompts(index: pd.DataFrame, grades: np.ndarray | None = None, pathology: str | None = None) -> list[str]:
    """The compound prompt of every row (module docstring); ``grades`` (0, 1, 2; -1 = no grade) adds the
    severity phrase."""
    prompts = []
    for i, row in enumerate(index.to_dict("records")):
        organs = json.loads(row["organs"]) if str(row.get("organs", "")).strip() else []
        severity = None
        if grades is not None and int(grades[i]) >= 0:
            severity = int(grades[i])
        prompts.append(compound_prompt(mask_preprompt(organs), report=_region(row), severity=severity,
                                       modality=str(row.get("modality", "")), pathology=pathology))
    return prompts


def _text(value) -> str:
    """A metadata cell as text; missing (None, NaN, "") -> ""."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # a grade column read as floats: 2.0 -> "2"
    return str(value).strip()


def _column(index: pd.DataFrame, field: str, key: str) -> str:
    column = f"prompt_{field}"
    if column not in index.columns:
        have = sorted(c[len("prompt_"):] for c in index.columns if c.startswith("prompt_"))
        raise KeyError(f"{key}: no prompt field {field!r} (column {column}) in the training-set index; "
                       f"its prompt fields: {have}")
    return column


def report_texts(index: pd.DataFrame, fields: Sequence[str], separator: str) -> list[str | None]:
    """Each row's report: the non-empty ``prompt_<field>`` values of ``fields`` joined by ``separator``
    (``None`` where all are empty)."""
    columns = [_column(index, f, "generator.report.fields") for f in fields]
    out = []
    for row in index[columns].itertuples(index=False):
        parts = [" ".join(_text(v).split()) for v in row]
        parts = [p for p in parts if p]
        out.append(separator.join(parts) if parts else None)
    return out


def metadata_grades(index: pd.DataFrame, field: str, levels: Mapping | None = None) -> np.ndarray:
    """Grade 0 (low) / 1 (mild) / 2 (severe) of each row from its ``prompt_<field>`` value, -1 where the case
    has none (no severity phrase; the count is logged). ``levels`` maps the field's values to the words
    (e.g. ``{"1": "low", "2": "mild", "3": "severe"}``); empty: the values are the words (or 0 / 1 / 2)."""
    column = _column(index, field, "generator.severity.from_field")
    mapping = {_text(k): severity_word(v) for k, v in (levels or {}).items()}
    grades = np.full(len(index), -1, dtype=np.int64)
    for i, value in enumerate(index[column].tolist()):
        key = _text(value)
        if not key:
            continue
        if mapping:
            if key not in mapping:
                raise ValueError(f"generator.severity.levels has no entry for {field} value {key!r} "
                                 f"(levels: {sorted(mapping)})")
            word = mapping[key]
        else:
            try:
                word = severity_word(int(key) if key.isdigit() else key)
            except ValueError as exc:
                raise ValueError(f"generator.severity.from_field {field!r}: value {key!r} is no grade; "
                                 "map the field's values with generator.severity.levels") from exc
        grades[i] = SEVERITY_WORDS.index(word)
    missing = int((grades < 0).sum())
    if missing:
        log.warning("generator.severity.from_field %r: %d of %d samples have no value: no severity phrase",
                    field, missing, len(grades))
    return grades


def prompt_table(text_encoder, prompts: Sequence[str], max_length: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(tokens, keep, pooled)`` of ``prompts`` plus the empty prompt (the last row, the null condition);
    ``pooled`` is ``None`` for a text encoder without pooled vectors."""
    rows = list(prompts) + [""]
    tokens, keep = text_encoder.encode(rows, max_length)
    pooled = text_encoder.encode_pooled(rows, max_length) if getattr(text_encoder, "pooled_dim", None) else None
    return tokens.float().contiguous(), keep.contiguous(), None if pooled is None else pooled.float().contiguous()


@dataclass
class PromptTable:
    """What :func:`encode_conditions` returns: ``ids`` (one per row) into ``prompts`` / the token table."""

    ids: list[int]
    prompts: list[str]
    tokens: torch.Tensor  # (P + 1, L, D); row P is the null condition
    keep: torch.Tensor  # (P + 1, L) bool
    pooled: torch.Tensor | None
    #: (P + 1,) long: the id of each prompt with its mask pre-prompt replaced ("no image segmentation is provided")
    no_mask: torch.Tensor | None = None
    #: the first token of the report part (the pre-prompt's width); ``None``: no report part
    report_start: int | None = None


def _separator(text_encoder, configured: str | None) -> str:
    if configured is not None:
        return configured
    sep = getattr(text_encoder, "separator_token", None)
    return f" {sep} " if sep else " "


def _count_truncated(text_encoder, reports: Sequence[str | None], length: int) -> int:
    distinct = sorted({r for r in reports if r})
    counts = text_encoder.token_counts(distinct) if distinct else []
    over = [n for n in counts if n > length]
    if over:
        log.warning("generator.report: %d of %d distinct reports exceed report_length %d tokens and are truncated "
                    "(longest %d tokens)", len(over), len(distinct), length, max(over))
    missing = sum(1 for r in reports if not r)
    if missing:
        log.info("generator.report: %d of %d samples have no report (report positions masked)", missing, len(reports))
    return len(over)


def _display(pre: str, report: str | None) -> str:
    return pre if report is None else f"{pre}{REPORT_SEP}{report}"


def encode_conditions(index: pd.DataFrame, grades: np.ndarray | None, pathology: str | None, text_encoder,
                      max_length: int, report: Mapping | None = None, mask_variants: bool = False) -> PromptTable:
    """Prompt ids and token table of ``index``'s rows (module docstring). ``report``: the
    ``generator.report`` section (``fields``, ``pre_prompt_length``, ``report_length``, ``separator``) or
    ``None`` (no report part; prompts encoded at ``max_length``)."""
    pre = slice_prompts(index, grades, pathology)
    reports: list[str | None] = [None] * len(pre)
    if report is not None:
        reports = report_texts(index, report["fields"], _separator(text_encoder, report.get("separator")))
        _count_truncated(text_encoder, reports, int(report["report_length"]))
    keys = list(zip(pre, reports))
    variants: list[tuple[str, str | None]] = []
    if mask_variants:
        variants = list(zip(slice_prompts(index.assign(organs="[]"), grades, pathology), reports))
    unique = list(dict.fromkeys(keys + variants))
    position = {k: i for i, k in enumerate(unique)}
    no_mask = None
    if mask_variants:
        no_mask = torch.arange(len(unique) + 1, dtype=torch.long)  # the null condition stays itself
        for key, variant in zip(keys, variants):
            no_mask[position[key]] = position[variant]
    report_start = None
    if report is None:
        tokens, keep, pooled = prompt_table(text_encoder, [k[0] for k in unique], max_length)
    else:
        pre_length, report_length = int(report["pre_prompt_length"]), int(report["report_length"])
        rows = unique + [("", None)]
        tokens, keep = text_encoder.encode_compound([p for p, _ in rows], [r for _, r in rows], pre_length,
                                                    report_length)
        tokens, keep = tokens.float().contiguous(), keep.contiguous()
        pooled = None
        if getattr(text_encoder, "pooled_dim", None):
            pooled = text_encoder.encode_pooled([p for p, _ in rows], pre_length).float().contiguous()
        report_start = int(text_encoder.encode([""], pre_length)[0].shape[1])
    return PromptTable([position[k] for k in keys], [_display(p, r) for p, r in unique], tokens, keep, pooled,
                       no_mask, report_start)
