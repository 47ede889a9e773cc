"""The three ways a claim compares ``a`` with ``b``, and what "no effect" is for each.

``difference``: a - b (no effect: 0); ``ratio``: a / b (no effect: 1); ``relative``: (a - b) / b (no
effect: 0). They work on numbers and elementwise on arrays (bootstrap replicates); a zero ``b`` gives
NaN for the ratio and the relative change.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["KINDS", "NO_EFFECT", "effect", "effect_bounds", "half_unit"]

KINDS = ("difference", "ratio", "relative")
NO_EFFECT = {"difference": 0.0, "ratio": 1.0, "relative": 0.0}


def effect(kind: str, a, b):
    """``a`` against ``b`` as ``kind``; floats in, float out; arrays in, array out."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "difference":
            out = a - b
        elif kind == "ratio":
            out = np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)
        elif kind == "relative":
            out = np.where(b != 0, (a - b) / np.where(b != 0, b, 1.0), np.nan)
        else:
            raise ValueError(f"unknown comparison kind {kind!r}; known: {', '.join(KINDS)}")
    return float(out) if out.ndim == 0 else out


def half_unit(value: float) -> float:
    """Half a unit of the last digit ``value`` is written with (``2.322`` -> 0.0005, ``33`` -> 0.5): how far
    the unrounded number may lie from it."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        mantissa, exponent = text.lower().split("e")
        decimals = len(mantissa.partition(".")[2].rstrip("0")) - int(exponent)
    else:
        decimals = len(text.partition(".")[2].rstrip("0"))
    return 0.5 * 10.0 ** (-decimals)


def effect_bounds(kind: str, a: float, a_half: float, b: float, b_half: float) -> tuple[float, float]:
    """The smallest and largest effect of any ``a'`` in ``a +- a_half`` and ``b'`` in ``b +- b_half``:
    the range a published effect recomputed from rounded cells can have (each kind is monotone in a and
    in b while b keeps its sign, so the corners bound it)."""
    corners = [effect(kind, x, y) for x, y in itertools.product((a - a_half, a + a_half), (b - b_half, b + b_half))]
    finite = [c for c in corners if math.isfinite(c)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)
