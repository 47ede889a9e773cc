"""CLIP scores and zero-shot abnormality classification on CLIP embeddings (MedSyn2 Tables 2 and 3).

MedSyn2 (Sec. 4, "Baselines and Metrics"): "we leverage two frequently used CLIP models: CT-CLIP and
Pillar-0 to compute CLIP-Score on both text-to-image (T2I) and image-to-image (I2I) scopes" (Table 2,
"CLIP-Score (%) using reports only"), and "we leverage the zero-shot CT-CLIP to predict the 18
pathological labels based on the generated images. We report accuracy, precision, AUROC and F1 score
based on the ground truth" (Table 3). The paper gives no formula; here:

* **T2I** = mean over (generated volume, its report) pairs of ``100 * cos(image_emb, text_emb)``;
  **I2I** = the same between a generated volume and the real volume of the same report.
* Clipping at 0: the paper is silent. The default follows the usual CLIPScore (Hessel et al. 2021;
  torchmetrics' ``CLIPScore``: ``max(100 * cos, 0)``), whose "%" unit Table 2 uses; ``clip_at_zero=False``
  gives the plain mean of ``100 * cos``. Matched pairs of CT-CLIP are positive in practice (Table 2 Real
  T2I 16.46), so the two agree there.
* Zero-shot follows CT-CLIP's published recipe (``scripts/zero_shot.py``): per abnormality the prompts
  ``"<name> is present."`` and ``"<name> is not present."``, logits ``temperature.exp() * cos`` with the
  volume, softmax over the two, the "present" probability as the score. Metrics follow
  ``scripts/bootstrap_values.py`` / ``scripts/eval.py``: per abnormality a threshold from
  ``np.linspace(0, 1, 100)`` minimising the distance to the ROC corner ``sqrt((1 - TPR)^2 + FPR^2)``, chosen
  on the evaluated set itself (ties: the highest threshold), prediction ``score > threshold``; accuracy,
  precision of the positive class, F1 ``average="weighted"`` (over both classes), AUROC from the scores;
  the table value is the mean over the 18 abnormalities. (Its "bootstrap" loop resamples nothing: every
  iteration uses the full set.) Values here are fractions; Table 3 prints them x 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CT_RATE_ABNORMALITIES", "CTClipNetworks", "classification_metrics", "clip_score_i2i", "clip_score_t2i",
           "ct_clip_scores", "ct_clip_threshold", "zero_shot_classification", "zero_shot_probabilities",
           "zero_shot_prompts"]

CT_RATE_ABNORMALITIES = (
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
    "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
    "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
    "Interlobular septal thickening",
)
"""The 18 CT-RATE abnormality label columns, in CT-RATE's order (CT-CLIP ``scripts/zero_shot.py`` prompts)."""
METRICS = ("accuracy", "precision", "auroc", "f1")


class TextEncoder(Protocol):
    """What zero-shot classification needs of a text encoder (e.g. :class:`.ct_clip_text.CTClipTextEncoder`)."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


def _paired_cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [N, D] embedding sets of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    if len(a) == 0:
        raise ValueError("no embedding pairs")
    return F.cosine_similarity(a, b, dim=1)


def _score(cos: torch.Tensor, clip_at_zero: bool) -> float:
    values = 100.0 * cos
    return float((values.clamp(min=0.0) if clip_at_zero else values).mean())


def clip_score_t2i(image_emb: torch.Tensor | np.ndarray, text_emb: torch.Tensor | np.ndarray,
                   clip_at_zero: bool = True) -> float:
    """MedSyn2 T2I CLIP score: mean over rows of ``100 * cos(image_i, text_i)`` (row i: a volume and its report),
    each clipped at 0 by default (module docstring)."""
    return _score(_paired_cosine(image_emb, text_emb), clip_at_zero)


def clip_score_i2i(fake_emb: torch.Tensor | np.ndarray, real_emb: torch.Tensor | np.ndarray,
                   clip_at_zero: bool = True) -> float:
    """MedSyn2 I2I CLIP score: mean over rows of ``100 * cos(generated_i, real_i)`` (the real volume of
    the report the generated one was made from), each clipped at 0 by default."""
    return _score(_paired_cosine(fake_emb, real_emb), clip_at_zero)


def zero_shot_prompts(pathology: str) -> tuple[str, str]:
    """CT-CLIP's two prompts: ``("<name> is present.", "<name> is not present.")``."""
    return f"{pathology} is present.", f"{pathology} is not present."


def zero_shot_probabilities(image_emb: torch.Tensor | np.ndarray, text_encoder: TextEncoder,
                            pathologies: Sequence[str] = CT_RATE_ABNORMALITIES,
                            logit_scale: float | None = None) -> np.ndarray:
    """``[N, P]`` "present" probabilities: softmax over ``logit_scale * cos`` with the two prompts.

    ``logit_scale`` defaults to the encoder's ``logit_scale`` (CT-CLIP: ``temperature.exp()``), else 1.
    """
    scale = logit_scale if logit_scale is not None else float(getattr(text_encoder, "logit_scale", 1.0))
    texts = [t for p in pathologies for t in zero_shot_prompts(p)]
    text = F.normalize(torch.as_tensor(text_encoder.encode(texts)).detach().double().cpu(), dim=-1)
    image = F.normalize(torch.as_tensor(image_emb).detach().double().cpu(), dim=-1)
    logits = scale * (image @ text.T).reshape(len(image), len(pathologies), 2)
    return logits.softmax(dim=-1)[..., 0].numpy()


def ct_clip_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """CT-CLIP's ``find_threshold``: of ``linspace(0, 1, 100)``, the last one closest to the ROC corner."""
    y = np.asarray(labels).astype(bool)
    grid = np.linspace(0, 1, 100)
    pred = np.asarray(scores)[None, :] > grid[:, None]
    tpr = (pred & y).sum(1) / y.sum()
    fpr = (pred & ~y).sum(1) / (~y).sum()
    dist = np.sqrt((1 - tpr) ** 2 + fpr ** 2)
    return float(grid[len(grid) - 1 - int(np.argmin(dist[::-1]))])


def _labels(labels, pathologies: Sequence[str]) -> np.ndarray:
    if hasattr(labels, "columns"):  # a CT-RATE label table: its columns by name
        missing = [p for p in pathologies if p not in labels.columns]
        if missing:
            raise KeyError(f"label table lacks the columns {missing}")
        labels = labels[list(pathologies)].to_numpy()
    out = np.asarray(labels)
    if out.ndim != 2 or out.shape[1] != len(pathologies):
        raise ValueError(f"labels must be [N, {len(pathologies)}], got {out.shape}")
    return out.astype(int)


def classification_metrics(scores: np.ndarray, labels, pathologies: Sequence[str] = CT_RATE_ABNORMALITIES,
                           threshold: str | float = "ct_clip") -> dict:
    """Accuracy, precision, AUROC, F1 (weighted) per abnormality and their mean, from ``[N, P]`` scores.

    ``threshold``: ``"ct_clip"`` (per abnormality, :func:`ct_clip_threshold`) or one number for all. An
    abnormality with one class only in ``labels`` has no AUROC / ROC threshold: its values are ``None``
    and the mean is over the others (``n_scored``).
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, roc_auc_score

    scores, y = np.asarray(scores, dtype=float), _labels(labels, pathologies)
    if scores.shape != y.shape:
        raise ValueError(f"scores {scores.shape} and labels {y.shape} differ")
    per = {}
    for i, name in enumerate(pathologies):
        s, t = scores[:, i], y[:, i]
        entry = {"n_positive": int(t.sum()), "n": len(t)}
        if t.min() == t.max():
            per[name] = {**entry, **dict.fromkeys(METRICS), "threshold": None,
                         "status": "not applicable: one class only in the labels"}
            continue
        cut = ct_clip_threshold(s, t) if threshold == "ct_clip" else float(threshold)
        pred = (s > cut).astype(int)
        per[name] = {**entry, "accuracy": float(accuracy_score(t, pred)),
                     "precision": float(precision_score(t, pred, zero_division=0)),
                     "auroc": float(roc_auc_score(t, s)), "f1": float(f1_score(t, pred, average="weighted")),
                     "threshold": cut, "status": "ok"}
    scored = [v for v in per.values() if v["status"] == "ok"]
    mean = {m: (float(np.mean([v[m] for v in scored])) if scored else None) for m in METRICS}
    return {**mean, "per_pathology": per, "n_scored": len(scored),
            "threshold": threshold if threshold == "ct_clip" else float(threshold)}


def zero_shot_classification(image_emb: torch.Tensor | np.ndarray, text_encoder: TextEncoder,
                             pathologies: Sequence[str] = CT_RATE_ABNORMALITIES, labels=None,
                             logit_scale: float | None = None, threshold: str | float = "ct_clip") -> dict:
    """CT-CLIP zero-shot classification of ``[N, D]`` image embeddings against ``[N, P]`` 0/1 labels (array or
    a table with the abnormality columns): :func:`classification_metrics` plus ``probabilities`` ``[N, P]``."""
    if labels is None:
        raise ValueError("zero-shot classification needs the ground-truth labels [N, P]")
    probs = zero_shot_probabilities(image_emb, text_encoder, pathologies, logit_scale)
    return {**classification_metrics(probs, labels, pathologies, threshold), "probabilities": probs}


class CTClipNetworks:
    """CT-CLIP's image and text sides of one checkpoint (and tokenizer folder), each loaded on first use, once,
    and moved to ``device``: several :func:`ct_clip_scores` calls given the same instance load them once."""

    def __init__(self, checkpoint: str | Path | None, tokenizer_dir: str | Path | None,
                 device: torch.device | str = "cpu"):
        self.checkpoint, self.tokenizer_dir, self.device = checkpoint, tokenizer_dir, device
        self._image: torch.nn.Module | None = None
        self._text: Any = None

    def image(self) -> torch.nn.Module:
        """The image encoder (:func:`~medsynth.metrics.ct_clip.load_ct_clip`) on :attr:`device`."""
        if self._image is None:
            from medsynth.metrics.ct_clip import load_ct_clip

            self._image = load_ct_clip(self.checkpoint).to(self.device)
        return self._image

    def text(self) -> Any:
        """The text encoder (:func:`~medsynth.metrics.ct_clip_text.load_ct_clip_text`) on :attr:`device`; its
        loading errors propagate (and it is tried again on the next call)."""
        if self._text is None:
            from medsynth.metrics.ct_clip_text import load_ct_clip_text

            self._text = load_ct_clip_text(self.checkpoint, self.tokenizer_dir).to(self.device)
        return self._text

    def embed(self, volumes: torch.Tensor | np.ndarray, hu_range: Sequence[float],
              spacing: Sequence[float] | None = None, batch_size: int = 2) -> torch.Tensor:
        """``[N, D]`` float32 CPU image embeddings of ``[N, 1, X, Y, Z]`` model-unit ``volumes`` (mapped to HU
        by ``hu_range``), ``batch_size`` volumes at a time in order."""
        net, lo, hi = self.image(), float(hu_range[0]), float(hu_range[1])
        vols, feats = torch.as_tensor(volumes), []
        for i in range(0, len(vols), int(batch_size)):
            hu = (vols[i:i + int(batch_size)].float() + 1.0) / 2.0 * (hi - lo) + lo
            with torch.no_grad():
                feats.append((net(hu, tuple(spacing)) if spacing else net(hu)).float().cpu())
        return torch.cat(feats)


def ct_clip_scores(checkpoint: str | Path | None, tokenizer_dir: str | Path | None,
                   volumes: torch.Tensor | np.ndarray, reports: Sequence[str] | None = None,
                   real: torch.Tensor | np.ndarray | None = None, labels=None,
                   hu_range: Sequence[float] | None = (-1024.0, 1024.0), spacing: Sequence[float] | None = None,
                   batch_size: int = 2, device: torch.device | str = "cpu", clip_at_zero: bool = True,
                   key: str = "metrics.ct_clip_pretrained_path",
                   tokenizer_key: str = "metrics.ct_clip_tokenizer_path", networks: CTClipNetworks | None = None,
                   image_emb: torch.Tensor | None = None, real_emb: torch.Tensor | None = None,
                   return_embeddings: bool = False) -> dict | tuple[dict, dict]:
    """Table 2 (CT-CLIP columns) and Table 3 entries for ``[N, 1, X, Y, Z]`` model-unit CT ``volumes``.

    ``reports`` (row i: the report of volume i) give T2I, ``real`` (row i: the real volume of that report)
    I2I, ``labels`` (``[N, 18]``, CT-RATE's columns) the zero-shot classification. For the "Real" rows pass
    the real volumes as ``volumes``. Each entry has ``status``: "ok", "unavailable: <reason>" (no checkpoint /
    tokenizer) or "not applicable: <reason>"; values are ``None`` unless "ok". ``labels`` columns follow
    :data:`CT_RATE_ABNORMALITIES` (or a table with those columns).

    ``networks``: the :class:`CTClipNetworks` of ``checkpoint`` / ``tokenizer_dir`` to use (loaded once across
    calls; by default loaded here, on ``device``). ``image_emb`` / ``real_emb``: the embeddings of ``volumes`` /
    ``real`` (:meth:`CTClipNetworks.embed` with this ``hu_range``, ``spacing``, ``batch_size``) when the caller
    has them: they are not embedded again. ``return_embeddings``: also return ``{"volumes": ..., "real": ...}``,
    the embeddings used (``None`` where not needed).
    """
    from medsynth.metrics.ct_clip_text import text_encoder_status

    base = {"value": None, "extractor": "CT-CLIP (CT-CLIP_v2.pt)"}
    out = {"t2i": dict(base), "i2i": dict(base), "zero_shot": {**dict.fromkeys(METRICS), **base}}
    del out["zero_shot"]["value"]
    text_status = text_encoder_status(checkpoint, tokenizer_dir, key, tokenizer_key)
    image_status = "ok" if checkpoint is not None and Path(checkpoint).is_file() else text_status
    needs = {"t2i": reports is None and "no reports given", "i2i": real is None and "no real volumes given",
             "zero_shot": labels is None and "no abnormality labels given"}
    for name, given in (("reports", reports), ("real", real), ("labels", labels)):
        if given is not None and len(given) != len(volumes):
            raise ValueError(f"{len(volumes)} volumes but {len(given)} {name}")
    for name, entry in out.items():
        status = image_status if name == "i2i" else text_status
        if status == "ok" and hu_range is None:
            status = "not applicable: CT-CLIP embeds CT volumes in HU, these are not CT"
        elif status == "ok" and needs[name]:
            status = f"not applicable: {needs[name]}"
        entry["status"] = status
    if all(e["status"] != "ok" for e in out.values()):
        return (out, {"volumes": None, "real": None}) if return_embeddings else out
    nets = networks if networks is not None else CTClipNetworks(checkpoint, tokenizer_dir, device)
    image = image_emb if image_emb is not None else nets.embed(volumes, hu_range, spacing, batch_size)
    if out["i2i"]["status"] == "ok":
        real_emb = real_emb if real_emb is not None else nets.embed(real, hu_range, spacing, batch_size)
        out["i2i"].update(value=clip_score_i2i(image, real_emb, clip_at_zero), n=len(image))
    if out["t2i"]["status"] == "ok" or out["zero_shot"]["status"] == "ok":
        text_net = nets.text()
        if out["t2i"]["status"] == "ok":
            text = text_net.encode(list(reports)).float().cpu()
            out["t2i"].update(value=clip_score_t2i(image, text, clip_at_zero), n=len(image))
        if out["zero_shot"]["status"] == "ok":
            res = zero_shot_classification(image, text_net, CT_RATE_ABNORMALITIES, labels)
            out["zero_shot"].update({k: v for k, v in res.items() if k != "probabilities"}, n=len(image))
    if return_embeddings:
        return out, {"volumes": image, "real": real_emb if out["i2i"]["status"] == "ok" else None}
    return out
