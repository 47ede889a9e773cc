"""The verdict on a claim from an interval of its effect (or from a single published number).

Rule, with ``no effect`` = 0 for a difference or a relative change and 1 for a ratio, and ``tol`` the
claim's tolerance:

- ``lower``: the whole interval below ``no effect - tol`` -> reproduced; the whole interval above
  ``no effect`` (the effect goes the other way) -> contradicted; otherwise not resolvable.
- ``higher``: the mirror image: above ``no effect + tol`` -> reproduced; below ``no effect`` -> contradicted.
- ``equivalent``: the whole interval inside ``[no effect - tol, no effect + tol]`` -> reproduced; the whole
  interval outside it (entirely below or entirely above) -> contradicted; otherwise not resolvable.
- ``at_most`` (non-inferiority of a lower-is-better metric, "on par with or better"): the whole interval
  below ``no effect + tol`` -> reproduced; the whole interval above it -> contradicted; otherwise not
  resolvable. ``at_least``: the mirror image (above ``no effect - tol`` -> reproduced).

So "not resolvable" means the interval spans both outcomes: the study is too small to tell.
A published number is judged by the same rule as an interval of zero width.
"""

from __future__ import annotations

from .effects import NO_EFFECT

__all__ = ["CONTRADICTED", "NOT_RESOLVABLE", "REPRODUCED", "verdict"]

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
NOT_RESOLVABLE = "not resolvable"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def verdict(direction: str, tolerance: float, kind: str, low: float, high: float) -> tuple[str, str]:
    """``(verdict, why)`` for an effect whose interval is ``[low, high]`` (see the module's rule)."""
    null = NO_EFFECT[kind]
    span = f"[{_fmt(low)}, {_fmt(high)}]"
    if direction == "lower":
        if high < null - tolerance:
            return REPRODUCED, f"{span} lies below {_fmt(null - tolerance)}"
        if low > null:
            return CONTRADICTED, f"{span} lies above {_fmt(null)} (the other way)"
        return NOT_RESOLVABLE, f"{span} lies neither wholly below {_fmt(null - tolerance)} nor above {_fmt(null)}"
    if direction == "higher":
        if low > null + tolerance:
            return REPRODUCED, f"{span} lies above {_fmt(null + tolerance)}"
        if high < null:
            return CONTRADICTED, f"{span} lies below {_fmt(null)} (the other way)"
        return NOT_RESOLVABLE, f"{span} lies neither wholly above {_fmt(null + tolerance)} nor below {_fmt(null)}"
    if direction == "equivalent":
        band = f"[{_fmt(null - tolerance)}, {_fmt(null + tolerance)}]"
        if null - tolerance <= low and high <= null + tolerance:
            return REPRODUCED, f"{span} lies inside {band}"
        if high < null - tolerance or low > null + tolerance:
            return CONTRADICTED, f"{span} lies outside {band}"
        return NOT_RESOLVABLE, f"{span} straddles an edge of {band}"
    if direction == "at_most":
        bound = null + tolerance
        if high <= bound:
            return REPRODUCED, f"{span} lies at or below {_fmt(bound)}"
        if low > bound:
            return CONTRADICTED, f"{span} lies above {_fmt(bound)}"
        return NOT_RESOLVABLE, f"{span} straddles {_fmt(bound)}"
    if direction == "at_least":
        bound = null - tolerance
        if low >= bound:
            return REPRODUCED, f"{span} lies at or above {_fmt(bound)}"
        if high < bound:
            return CONTRADICTED, f"{span} lies below {_fmt(bound)}"
        return NOT_RESOLVABLE, f"{span} straddles {_fmt(bound)}"
    raise ValueError(f"unknown direction {direction!r}")
