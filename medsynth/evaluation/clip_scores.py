"""MedSyn2 Tables 2 and 3 in the volume metrics record: ``clip_scores`` of one sampling run of volumes.

``clip_scores.ct_clip`` holds the CLIP scores (:func:`medsynth.metrics.clip_scores.ct_clip_scores`) of the
generated volumes: ``t2i`` (each generated volume vs the report it was generated from), ``i2i`` (vs the real
volume of the same conditions) and ``zero_shot`` (CT-CLIP's zero-shot classification of the 18 CT-RATE
abnormalities against the real case's labels); ``ct_clip.real`` the same ``t2i`` and ``zero_shot`` of the real
volumes (the tables' "Real" rows). ``clip_scores.pillar0``: Table 2's other network, with no loader here.

The report of volume i is the one its real case carries in the training-set index (the columns
``prompt_report`` = CT-RATE ``Findings_EN`` and ``prompt_impression`` = ``Impressions_EN``, config
``datasets[].layout.prompt_columns_as``), joined as CT-CLIP's inference dataset joins them
(:func:`~medsynth.metrics.ct_clip_text.ct_clip_report_text`): the text the sampler conditioned on
(``generator.report``) is made from the same columns. The labels are the index's ``abnormality_<name>`` columns
(config ``datasets[].layout.labels_csv``: CT-RATE's ``multi_abnormality_labels``), one per
:data:`~medsynth.metrics.clip_scores.CT_RATE_ABNORMALITIES`.

Each entry has a ``status``: "ok", "unavailable: <reason>" (no weights, no labels) or "not applicable:
<reason>" (no reports, not CT); a reason in the data (no reports, no labels, not CT) is given whatever the
weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from medsynth.metrics.clip_scores import CTClipNetworks

__all__ = ["LABEL_PREFIX", "PILLAR0_STATUS", "REPORT_COLUMNS", "abnormality_labels", "ct_clip_reports",
           "volume_clip_scores"]

#: the training-set index columns of CT-CLIP's report text: findings, impressions (in that order)
REPORT_COLUMNS = ("prompt_report", "prompt_impression")
#: the training-set index column of abnormality ``<name>`` is ``abnormality_<name>`` (0 / 1)
LABEL_PREFIX = "abnormality_"
PILLAR0_STATUS = ("unavailable: no Pillar-0 loader in this version (Table 2's second CLIP network; only CT-CLIP's "
                  "columns are measured)")
KEY = "metrics.ct_clip_pretrained_path"
TOKENIZER_KEY = "metrics.ct_clip_tokenizer_pretrained_path"


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else " ".join(str(value).split())


def ct_clip_reports(table: pd.DataFrame) -> list[str] | str:
    """CT-CLIP's report text of each row (``""`` where the row has none), or why there are none at all."""
    columns = [c for c in REPORT_COLUMNS if c in table.columns]
    if not columns:
        return "not applicable: no reports in the training-set index (columns prompt_report / prompt_impression)"
    from medsynth.metrics.ct_clip_text import ct_clip_report_text

    texts = []
    for row in table[columns].itertuples(index=False):
        parts = {c: _text(v) for c, v in zip(columns, row)}
        texts.append(ct_clip_report_text(parts.get("prompt_report") or None, parts.get("prompt_impression") or None)
                     if any(parts.values()) else "")
    if not any(texts):
        return "not applicable: no reports in the training-set index (its report columns are empty)"
    return texts


def abnormality_labels(table: pd.DataFrame, pathologies: Sequence[str] | None = None) -> np.ndarray | str:
    """``[N, 18]`` 0/1 labels from the ``abnormality_<name>`` columns, or why there are none."""
    from medsynth.metrics.clip_scores import CT_RATE_ABNORMALITIES

    names = list(pathologies or CT_RATE_ABNORMALITIES)
    missing = [n for n in names if LABEL_PREFIX + n not in table.columns]
    if len(missing) == len(names):
        return ("unavailable: the case table has no CT-RATE abnormality labels (columns abnormality_<name>, from "
                "datasets[].layout.labels_csv: CT-RATE's dataset/multi_abnormality_labels)")
    if missing:
        return f"unavailable: the case table lacks the abnormality label columns {[LABEL_PREFIX + n for n in missing]}"
    values = table[[LABEL_PREFIX + n for n in names]].apply(pd.to_numeric, errors="coerce")
    if values.isna().to_numpy().any():
        return "unavailable: some volumes have no abnormality labels (empty or non-numeric abnormality_* cells)"
    return values.to_numpy().astype(int)


def _text_side_error(networks: CTClipNetworks) -> str | None:
    """Why CT-CLIP's text encoder does not load from an existing checkpoint and tokenizer folder (e.g. a
    tokenizer of another vocabulary than the checkpoint's), as an "unavailable" status; ``None`` when it loads
    (kept in ``networks`` for the scores) or when :func:`~medsynth.metrics.ct_clip_text.text_encoder_status`
    already says why not."""
    from medsynth.metrics.clip_weights import CheckpointLayoutError
    from medsynth.metrics.ct_clip_text import text_encoder_status

    checkpoint, tokenizer = networks.checkpoint, networks.tokenizer_dir
    if text_encoder_status(checkpoint, tokenizer) != "ok":
        return None
    try:
        networks.text()
    except (CheckpointLayoutError, ValueError, KeyError, OSError) as err:
        return (f"unavailable: CT-CLIP's text encoder does not load with this tokenizer ({KEY} = {checkpoint}, "
                f"{TOKENIZER_KEY} = {tokenizer}: {type(err).__name__}: {err})")
    return None


def _override(entry: dict, reason: str | None) -> dict:
    if reason is None:
        return entry
    return {**entry, **{k: None for k in ("value", "accuracy", "precision", "auroc", "f1") if k in entry},
            "status": reason}


def volume_clip_scores(metrics_cfg: Mapping, table: pd.DataFrame, real: torch.Tensor | np.ndarray,
                       fake: torch.Tensor | np.ndarray, hu_range: Sequence[float] | None,
                       spacing: Sequence[float] | None = None, device: torch.device | str = "cpu",
                       batch_size: int = 2) -> dict:
    """``{"ct_clip": {t2i, i2i, zero_shot, real: {t2i, zero_shot}, n_reports}, "pillar0": {status}}`` for the
    ``[N, 1, X, Y, Z]`` model-unit ``real`` / ``fake`` volumes (row i: the same conditions) and ``table``, the
    training-set index rows of the real volumes (module docstring).

    CT-CLIP's networks are loaded once each and the real volumes embedded once (their I2I side and the Real
    rows); the numbers are those of separate :func:`~medsynth.metrics.clip_scores.ct_clip_scores` calls."""
    from medsynth.metrics.clip_scores import ct_clip_scores

    checkpoint = metrics_cfg.get("ct_clip_pretrained_path")
    tokenizer = metrics_cfg.get("ct_clip_tokenizer_pretrained_path")
    if len(table) != len(real) or len(real) != len(fake):
        raise ValueError(f"{len(table)} index rows, {len(real)} real and {len(fake)} generated volumes")
    reports = ct_clip_reports(table)
    labels = abnormality_labels(table)
    not_ct = None if hu_range is not None else "not applicable: CT-CLIP embeds CT volumes in HU, these are not CT"
    why = {"t2i": not_ct or (reports if isinstance(reports, str) else None), "i2i": not_ct,
           "zero_shot": not_ct or (labels if isinstance(labels, str) else None)}
    texts = None if isinstance(reports, str) else reports
    label_arr = None if isinstance(labels, str) else labels
    networks = CTClipNetworks(checkpoint, tokenizer, device)  # each side loaded once, on first use
    broken = _text_side_error(networks) if not_ct is None and (texts or label_arr is not None) else None
    if broken:  # I2I still measured; T2I and zero-shot say why (unless the data already does)
        texts, label_arr = None, None
        why = {k: (v or (broken if k != "i2i" else None)) for k, v in why.items()}
    has = [] if texts is None else [i for i, t in enumerate(texts) if t]
    common = dict(hu_range=hu_range, spacing=spacing, batch_size=batch_size, device=device, key=KEY,
                  tokenizer_key=TOKENIZER_KEY, networks=networks)
    full = texts is not None and len(has) == len(texts)  # every volume has a report: one pass gives T2I too
    # without HU (not CT) ct_clip_scores loads nothing: every entry says why
    gen, embedded = ct_clip_scores(checkpoint, tokenizer, fake, texts if full else None, real=real,
                                   labels=label_arr, return_embeddings=True, **common)
    ref = ct_clip_scores(checkpoint, tokenizer, real, texts if full else None, labels=label_arr,
                         image_emb=embedded["real"], **common)  # the real volumes as embedded for I2I
    # T2I over the volumes that have a report: embedded in batches of their own, as a call on them alone does
    # (other batch mates than in the full set's batches could change the last bits of an embedding)
    if not_ct is None and texts is not None and not full:
        sub = torch.as_tensor(np.asarray(has))
        gen["t2i"] = ct_clip_scores(checkpoint, tokenizer, torch.as_tensor(fake)[sub], [texts[i] for i in has],
                                    **common)["t2i"]
        ref["t2i"] = ct_clip_scores(checkpoint, tokenizer, torch.as_tensor(real)[sub], [texts[i] for i in has],
                                    **common)["t2i"]
    for res in (gen, ref):  # zero-shot with no abnormality of both classes in the labels has no mean
        if res["zero_shot"]["status"] == "ok" and not res["zero_shot"].get("n_scored"):
            why["zero_shot"] = "not applicable: every abnormality has one class only in these volumes' labels"
    out = {name: _override(gen[name], why[name]) for name in ("t2i", "i2i", "zero_shot")}
    out["real"] = {name: _override(ref[name], why[name]) for name in ("t2i", "zero_shot")}
    out["n_volumes"], out["n_reports"] = int(len(fake)), len(has)
    out["labels"] = "abnormality_<name> columns" if label_arr is not None else None
    return {"ct_clip": out, "pillar0": {"status": PILLAR0_STATUS, "t2i": None, "i2i": None}}
