"""volume_clip_scores loads CT-CLIP's sides once and embeds the real volumes once, and writes the record, bit for
bit, of the former call pattern: ``reference_volume_clip_scores`` below is the former code (a text-side
pre-check load, then separate ``ct_clip_scores`` calls each loading the networks and embedding its volumes),
with the former ``ct_clip_scores`` (``reference_ct_clip_scores``), run on the tiny random-value CT-CLIP of
tests/test_clip_scores.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_medsyn2_clip_tables import HU, index_rows, units, volumes, weights  # noqa: F401 (fixtures)
from test_clip_extractors import ct_volumes
from test_clip_scores import write_tokenizer

import medsynth.metrics.ct_clip as ct_clip_module
import medsynth.metrics.ct_clip_text as ct_clip_text_module
from medsynth.evaluation.clip_scores import (KEY, PILLAR0_STATUS, TOKENIZER_KEY, abnormality_labels,
                                             ct_clip_reports, volume_clip_scores)
from medsynth.metrics.clip_scores import (CT_RATE_ABNORMALITIES, METRICS, CTClipNetworks, clip_score_i2i,
                                          clip_score_t2i, zero_shot_classification)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_ct_clip_scores(checkpoint, tokenizer_dir, volumes, reports=None, real=None, labels=None,
                             hu_range=(-1024.0, 1024.0), spacing=None, batch_size=2, device="cpu",
                             clip_at_zero=True, key="metrics.ct_clip_pretrained_path",
                             tokenizer_key="metrics.ct_clip_tokenizer_path") -> dict:
    """The former ct_clip_scores: loads both networks and embeds ``volumes`` (and ``real``) on every call."""
    from medsynth.metrics.ct_clip import load_ct_clip
    from medsynth.metrics.ct_clip_text import load_ct_clip_text, text_encoder_status

    base = {"value": None, "extractor": "CT-CLIP (CT-CLIP_v2.pt)"}
    out = {"t2i": dict(base), "i2i": dict(base), "zero_shot": {**dict.fromkeys(METRICS), **base}}
    del out["zero_shot"]["value"]
    text_status = text_encoder_status(checkpoint, tokenizer_dir, key, tokenizer_key)
    image_status = "ok" if checkpoint is not None and Path(checkpoint).is_file() else text_status
    needs = {"t2i": reports is None and "no reports given", "i2i": real is None and "no real volumes given",
             "zero_shot": labels is None and "no abnormality labels given"}
    for name, entry in out.items():
        status = image_status if name == "i2i" else text_status
        if status == "ok" and hu_range is None:
            status = "not applicable: CT-CLIP embeds CT volumes in HU, these are not CT"
        elif status == "ok" and needs[name]:
            status = f"not applicable: {needs[name]}"
        entry["status"] = status
    if all(e["status"] != "ok" for e in out.values()):
        return out
    net = load_ct_clip(checkpoint).to(device)
    lo, hi = float(hu_range[0]), float(hu_range[1])

    def embed(vols) -> torch.Tensor:
        vols, feats = torch.as_tensor(vols), []
        for i in range(0, len(vols), int(batch_size)):
            hu = (vols[i:i + int(batch_size)].float() + 1.0) / 2.0 * (hi - lo) + lo
            with torch.no_grad():
                feats.append((net(hu, tuple(spacing)) if spacing else net(hu)).float().cpu())
        return torch.cat(feats)

    image = embed(volumes)
    if out["i2i"]["status"] == "ok":
        out["i2i"].update(value=clip_score_i2i(image, embed(real), clip_at_zero), n=len(image))
    if out["t2i"]["status"] == "ok" or out["zero_shot"]["status"] == "ok":
        text_net = load_ct_clip_text(checkpoint, tokenizer_dir).to(device)
        if out["t2i"]["status"] == "ok":
            text = text_net.encode(list(reports)).float().cpu()
            out["t2i"].update(value=clip_score_t2i(image, text, clip_at_zero), n=len(image))
        if out["zero_shot"]["status"] == "ok":
            res = zero_shot_classification(image, text_net, CT_RATE_ABNORMALITIES, labels)
            out["zero_shot"].update({k: v for k, v in res.items() if k != "probabilities"}, n=len(image))
    return out


def reference_text_side_error(checkpoint, tokenizer):
    from medsynth.metrics.clip_weights import CheckpointLayoutError
    from medsynth.metrics.ct_clip_text import load_ct_clip_text, text_encoder_status

    if text_encoder_status(checkpoint, tokenizer) != "ok":
        return None
    try:
        load_ct_clip_text(checkpoint, tokenizer)
    except (CheckpointLayoutError, ValueError, KeyError, OSError) as err:
        return (f"unavailable: CT-CLIP's text encoder does not load with this tokenizer ({KEY} = {checkpoint}, "
                f"{TOKENIZER_KEY} = {tokenizer}: {type(err).__name__}: {err})")
    return None


def _override(entry, reason):
    if reason is None:
        return entry
    return {**entry, **{k: None for k in ("value", "accuracy", "precision", "auroc", "f1") if k in entry},
            "status": reason}


def reference_volume_clip_scores(metrics_cfg, table, real, fake, hu_range, spacing=None, device="cpu",
                                 batch_size=2) -> dict:
    """The former volume_clip_scores (its call pattern: four to six separate ct_clip_scores calls)."""
    checkpoint = metrics_cfg.get("ct_clip_pretrained_path")
    tokenizer = metrics_cfg.get("ct_clip_tokenizer_pretrained_path")
    reports = ct_clip_reports(table)
    labels = abnormality_labels(table)
    not_ct = None if hu_range is not None else "not applicable: CT-CLIP embeds CT volumes in HU, these are not CT"
    why = {"t2i": not_ct or (reports if isinstance(reports, str) else None), "i2i": not_ct,
           "zero_shot": not_ct or (labels if isinstance(labels, str) else None)}
    texts = None if isinstance(reports, str) else reports
    label_arr = None if isinstance(labels, str) else labels
    broken = (reference_text_side_error(checkpoint, tokenizer)
              if not_ct is None and (texts or label_arr is not None) else None)
    if broken:
        texts, label_arr = None, None
        why = {k: (v or (broken if k != "i2i" else None)) for k, v in why.items()}
    has = [] if texts is None else [i for i, t in enumerate(texts) if t]
    common = dict(hu_range=hu_range, spacing=spacing, batch_size=batch_size, device=device, key=KEY,
                  tokenizer_key=TOKENIZER_KEY)
    full = texts is not None and len(has) == len(texts)
    gen = reference_ct_clip_scores(checkpoint, tokenizer, fake, texts if full else None, real=real,
                                   labels=label_arr, **common)
    ref = reference_ct_clip_scores(checkpoint, tokenizer, real, texts if full else None, labels=label_arr, **common)
    if not_ct is None and texts is not None and not full:
        sub = torch.as_tensor(np.asarray(has))
        gen["t2i"] = reference_ct_clip_scores(checkpoint, tokenizer, torch.as_tensor(fake)[sub],
                                              [texts[i] for i in has], **common)["t2i"]
        ref["t2i"] = reference_ct_clip_scores(checkpoint, tokenizer, torch.as_tensor(real)[sub],
                                              [texts[i] for i in has], **common)["t2i"]
    for res in (gen, ref):
        if res["zero_shot"]["status"] == "ok" and not res["zero_shot"].get("n_scored"):
            why["zero_shot"] = "not applicable: every abnormality has one class only in these volumes' labels"
    out = {name: _override(gen[name], why[name]) for name in ("t2i", "i2i", "zero_shot")}
    out["real"] = {name: _override(ref[name], why[name]) for name in ("t2i", "zero_shot")}
    out["n_volumes"], out["n_reports"] = int(len(fake)), len(has)
    out["labels"] = "abnormality_<name> columns" if label_arr is not None else None
    return {"ct_clip": out, "pillar0": {"status": PILLAR0_STATUS, "t2i": None, "i2i": None}}


def dumped(record: dict) -> str:
    """The record as written (JSON), every number to the last bit."""
    return json.dumps(record, sort_keys=True, default=repr)


def _tables():
    partial = index_rows()
    partial.loc[3, ["prompt_report", "prompt_impression"]] = ""
    early = index_rows()
    early.loc[0, ["prompt_report", "prompt_impression"]] = ""
    flat = index_rows(labels=False).assign(**{"abnormality_" + n: "0" for n in CT_RATE_ABNORMALITIES})
    return {"full": index_rows(), "partial": partial, "early": early, "bare": index_rows(reports=False, labels=False),
            "reports_only": index_rows(labels=False), "labels_only": index_rows(reports=False), "flat": flat}


@pytest.mark.parametrize("case", list(_tables()))
@pytest.mark.parametrize("batch_size", [4, 3])
def test_the_record_is_that_of_the_former_calls(weights, volumes, case, batch_size):  # noqa: F811
    real, fake = volumes
    table = _tables()[case]
    want = reference_volume_clip_scores(weights, table, real, fake, HU, batch_size=batch_size)
    got = volume_clip_scores(weights, table, real, fake, HU, batch_size=batch_size)
    assert dumped(got) == dumped(want)
    assert got == want  # the same keys and values


def test_the_record_is_that_of_the_former_calls_with_spacing_and_more_volumes(weights):  # noqa: F811
    real, fake = units(ct_volumes(5, 2)), units(ct_volumes(5, 3, shift=200.0))
    table = index_rows()
    table = table.iloc[[0, 1, 2, 3, 0]].reset_index(drop=True)
    for batch_size in (2, 5):
        want = reference_volume_clip_scores(weights, table, real, fake, HU, spacing=(1.0, 1.5, 2.0),
                                            batch_size=batch_size)
        got = volume_clip_scores(weights, table, real, fake, HU, spacing=(1.0, 1.5, 2.0), batch_size=batch_size)
        assert dumped(got) == dumped(want)


def test_the_record_is_that_of_the_former_calls_without_weights_a_tokenizer_or_ct(weights, volumes,  # noqa: F811
                                                                                 tmp_path):
    real, fake = volumes
    other = write_tokenizer(tmp_path / "other")  # another vocabulary than the checkpoint's: the text side fails
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                *(f"w{i}" for i in range(36))]) + "\n")
    configs = [({"ct_clip_pretrained_path": None, "ct_clip_tokenizer_pretrained_path": None}, HU),
               ({"ct_clip_pretrained_path": "nowhere/CT-CLIP_v2.pt"}, HU),
               ({**weights, "ct_clip_tokenizer_pretrained_path": str(tmp_path / "empty")}, HU),
               ({**weights, "ct_clip_tokenizer_pretrained_path": str(other)}, HU),
               (weights, None)]
    for cfg, hu in configs:
        want = reference_volume_clip_scores(cfg, index_rows(), real, fake, hu, batch_size=4)
        assert dumped(volume_clip_scores(cfg, index_rows(), real, fake, hu, batch_size=4)) == dumped(want)


def test_each_network_is_loaded_once_and_the_real_volumes_embedded_once(weights, volumes, monkeypatch):  # noqa: F811
    real, fake = volumes
    loads = {"image": 0, "text": 0}
    embedded: list[torch.Tensor] = []
    for module, name, side in ((ct_clip_module, "load_ct_clip", "image"),
                               (ct_clip_text_module, "load_ct_clip_text", "text")):
        def counted(*args, _real=getattr(module, name), _side=side, **kwargs):
            loads[_side] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    real_embed = CTClipNetworks.embed
    monkeypatch.setattr(CTClipNetworks, "embed",
                        lambda self, vols, *a, **k: embedded.append(torch.as_tensor(vols)) or real_embed(self, vols,
                                                                                                       *a, **k))
    volume_clip_scores(weights, index_rows(), real, fake, HU, batch_size=4)
    assert loads == {"image": 1, "text": 1}
    assert len(embedded) == 2 and torch.equal(embedded[0], fake) and torch.equal(embedded[1], real)
