"""Compound prompts and condition dropout (MedSyn2 Sec. 3.2-3.3, Supp. 7.1-7.2; ViCTr Sec. 3.3).

* :func:`mask_preprompt` - MedSyn2's semantic pre-prompt ``c_m``: what the mask channels show
  (``"segmentation of liver, lungs"``), or ``"no image segmentation is provided"`` when there is no mask.
* :func:`compound_prompt` - ``c_text``: ``[modality; ] c_m [; <severity> <pathology>] [; report]``.
  The pre-prompt comes before the optional report (MedSyn2 Sec. 3.2); ViCTr's pathology prompts grade
  severity as ``low``, ``mild`` or ``severe`` (Sec. 3.3).
* :func:`condition_dropout` - MedSyn2's conditioning randomisation (Sec. 3.3) and the unconditional
  branch for classifier-free guidance: per sample, drop the report, the mask, both or neither;
  :func:`independent_dropout_probs` gives its four outcomes' probabilities for independent report and
  mask drops (config ``report_dropout`` / ``mask_dropout``).

MedSyn2 trains with five paraphrases of the pre-prompt and three of the empty-mask sentence (Supp.
7.2, Fig. 9) and tests with the first of each. The figure's wording is not in the text; variant 0 is
the sentence the paper quotes, the other variants are ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "NO_SEGMENTATION",
    "MASK_TEMPLATES",
    "NO_MASK_TEMPLATES",
    "SEVERITY_WORDS",
    "DROPOUT_OUTCOMES",
    "DEFAULT_DROPOUT_PROBS",
    "ABSENT_MASK_VALUE",
    "mask_preprompt",
    "severity_word",
    "compound_prompt",
    "condition_dropout",
    "independent_dropout_probs",
    "batch_prompts",
]

NO_SEGMENTATION = "no image segmentation is provided"
MASK_TEMPLATES = (
    "segmentation of {names}",
    "image segmentation of {names} is provided",
    "the segmentation mask shows {names}",
    "a mask of {names} is given",
    "{names} are segmented",
)
NO_MASK_TEMPLATES = (NO_SEGMENTATION, "no segmentation mask is given", "the image comes without segmentation")
SEVERITY_WORDS = ("low", "mild", "severe")
#: Background value of a condition mask (MedSyn2 Supp. 7.1 maps masks to [-0.5, 0.5]); a dropped mask is
#: all background.
ABSENT_MASK_VALUE = -0.5
#: What is dropped per sample: nothing, the report, the mask, or both.
DROPOUT_OUTCOMES = ("neither", "report", "mask", "both")
#: Our default (the papers give no rates): 70 % full conditioning, 10 % each of the other three.
DEFAULT_DROPOUT_PROBS = {"neither": 0.7, "report": 0.1, "mask": 0.1, "both": 0.1}


def _readable(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split())


def mask_preprompt(condition_names_present: Sequence[str] | None, variant: int = 0) -> str:
    """MedSyn2's pre-prompt ``c_m`` for the condition channels present in a sample.

    >>> mask_preprompt(["liver", "lungs"])
    'segmentation of liver, lungs'
    >>> mask_preprompt([])
    'no image segmentation is provided'

    Names are shown in the given order, duplicates removed, ``_`` read as a space. ``variant`` picks a
    paraphrase (0 = the paper's test-time sentence; Supp. 7.2).
    """
    names = list(dict.fromkeys(_readable(n) for n in (condition_names_present or []) if str(n).strip()))
    if not names:
        return NO_MASK_TEMPLATES[variant % len(NO_MASK_TEMPLATES)]
    return MASK_TEMPLATES[variant % len(MASK_TEMPLATES)].format(names=", ".join(names))


def severity_word(severity: str | int) -> str:
    """``low`` / ``mild`` / ``severe`` (ViCTr Sec. 3.3) from a word (any case) or a grade index 0, 1, 2."""
    if isinstance(severity, bool):
        raise ValueError(f"severity must be one of {SEVERITY_WORDS} or 0..2, got {severity!r}")
    if isinstance(severity, int):
        if 0 <= severity < len(SEVERITY_WORDS):
            return SEVERITY_WORDS[severity]
    elif isinstance(severity, str) and severity.strip().lower() in SEVERITY_WORDS:
        return severity.strip().lower()
    raise ValueError(f"severity must be one of {SEVERITY_WORDS} or 0..2, got {severity!r}")


def compound_prompt(
    mask_part: str,
    report: str | None = None,
    severity: str | int | None = None,
    modality: str | None = None,
    pathology: str | None = None,
) -> str:
    """The compound text prompt ``c_text`` (MedSyn2 Sec. 3.2), parts joined by ``"; "``.

    Order: modality, the mask pre-prompt, the severity phrase ``"<severity> <pathology>"`` (``pathology``
    defaults to the word ``pathology``), the report. Empty parts are left out.

    >>> compound_prompt("segmentation of liver", report="Nodular liver surface.", severity="mild",
    ...                 modality="MRI", pathology="cirrhosis")
    'MRI; segmentation of liver; mild cirrhosis; Nodular liver surface.'
    >>> compound_prompt("no image segmentation is provided")
    'no image segmentation is provided'
    """
    parts = []
    if modality and str(modality).strip():
        parts.append(str(modality).strip())
    if mask_part and str(mask_part).strip():
        parts.append(str(mask_part).strip())
    if severity is not None and severity != "":
        parts.append(f"{severity_word(severity)} {(pathology or 'pathology').strip()}")
    if report and str(report).strip():
        parts.append(" ".join(str(report).split()))
    return "; ".join(parts)


def _outcome_probs(probs: Mapping[str, float]) -> torch.Tensor:
    unknown = set(probs) - set(DROPOUT_OUTCOMES)
    if unknown:
        raise ValueError(f"unknown condition dropout outcome(s) {sorted(unknown)}; use {DROPOUT_OUTCOMES}")
    p = {k: float(probs.get(k, 0.0)) for k in DROPOUT_OUTCOMES}
    if "neither" not in probs:
        p["neither"] = 1.0 - sum(v for k, v in p.items() if k != "neither")
    if any(v < 0 for v in p.values()) or abs(sum(p.values()) - 1.0) > 1e-6:
        raise ValueError(f"condition dropout probabilities must be >= 0 and sum to 1, got {p}")
    return torch.tensor([p[k] for k in DROPOUT_OUTCOMES], dtype=torch.float64)


def condition_dropout(
    batch: Mapping,
    probs: Mapping[str, float] = DEFAULT_DROPOUT_PROBS,
    generator: torch.Generator | None = None,
    absent_value: float = ABSENT_MASK_VALUE,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Drop the report and/or the mask conditioning per sample (MedSyn2 Sec. 3.3; CFG's null condition).

    ``batch`` holds any of: ``"mask"`` (tensor ``(B, C, ...)``, condition masks or mask latents),
    ``"mask_prompt"`` (list of pre-prompts), ``"report"`` (list of str or None); other keys pass through.
    ``probs`` gives the probability of each outcome, keys from :data:`DROPOUT_OUTCOMES`: ``"report"``
    (drop the report only), ``"mask"`` (drop the mask only), ``"both"``, ``"neither"`` (keep all; if
    left out, it is 1 minus the rest). One draw per sample from ``generator``.

    A dropped mask becomes ``absent_value`` everywhere (default -0.5, all background) and its pre-prompt
    ``"no image segmentation is provided"``; a dropped report becomes None. Returns the new batch
    (inputs are not modified) and ``{"report": (B,) bool, "mask": (B,) bool}``, True where dropped.
    MedSyn2 zeroes the mask *latent* instead (``z_m = 0``): pass ``absent_value=0.0`` for that.
    """
    p = _outcome_probs(probs)
    sizes = {len(batch[k]) for k in ("mask", "mask_prompt", "report") if k in batch}
    if len(sizes) != 1:
        raise ValueError(f"batch needs at least one of mask / mask_prompt / report, all of one length; got {sizes}")
    (b,) = sizes
    draw = torch.multinomial(p, b, replacement=True, generator=generator)
    drop_report = (draw == DROPOUT_OUTCOMES.index("report")) | (draw == DROPOUT_OUTCOMES.index("both"))
    drop_mask = (draw == DROPOUT_OUTCOMES.index("mask")) | (draw == DROPOUT_OUTCOMES.index("both"))

    out = dict(batch)
    if "mask" in batch:
        mask = batch["mask"].clone()
        mask[drop_mask.to(mask.device)] = absent_value
        out["mask"] = mask
    if "mask_prompt" in batch:
        out["mask_prompt"] = [NO_SEGMENTATION if d else s for s, d in zip(batch["mask_prompt"], drop_mask.tolist())]
    if "report" in batch:
        out["report"] = [None if d else r for r, d in zip(batch["report"], drop_report.tolist())]
    return out, {"report": drop_report, "mask": drop_mask}


def independent_dropout_probs(report: float, mask: float) -> dict[str, float]:
    """The four outcomes of :func:`condition_dropout` when the report is dropped with probability ``report``
    and, independently, the mask with probability ``mask`` (MedSyn2's four conditioning modes, Supp. 7.2).

    >>> independent_dropout_probs(0.25, 0.5)
    {'neither': 0.375, 'report': 0.125, 'mask': 0.375, 'both': 0.125}
    """
    r, m = float(report), float(mask)
    if not (0.0 <= r <= 1.0 and 0.0 <= m <= 1.0):
        raise ValueError(f"report and mask dropout must lie in [0, 1], got {r}, {m}")
    return {"neither": (1 - r) * (1 - m), "report": r * (1 - m), "mask": (1 - r) * m, "both": r * m}


def batch_prompts(batch: Mapping, pathology: str | None = None) -> list[str]:
    """:func:`compound_prompt` per sample from ``mask_prompt`` and the optional ``report``, ``severity``
    and ``modality`` lists of a batch (e.g. after :func:`condition_dropout`)."""
    n = len(batch["mask_prompt"])
    col = lambda k: batch.get(k) or [None] * n  # noqa: E731
    return [
        compound_prompt(m, report=r, severity=s, modality=mo, pathology=pathology)
        for m, r, s, mo in zip(batch["mask_prompt"], col("report"), col("severity"), col("modality"))
    ]
