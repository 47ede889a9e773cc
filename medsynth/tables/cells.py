"""Table cells from records: a value with its bootstrap interval (:class:`~medsynth.tables.render.Measured`),
a paired gain over a baseline, or the short reason a value is missing."""

from __future__ import annotations

from collections.abc import Mapping

from .render import NOT_MEASURED, Measured

__all__ = ["downstream_scale", "fd_value", "interval_how", "measured", "measured_row", "paired_gain", "value_or_reason"]


def interval_how(record: Mapping) -> str:
    b = record.get("bootstrap") or {}
    how = (f"{100 * float(b.get('level', 0.95)):g} % percentile bootstrap interval, {b.get('resamples')} resamples "
           f"of the test {b.get('unit', 'samples')}")
    if (b.get("seeds") or 1) > 1:
        how += f", each from {b['seeds']} training seeds drawn with replacement (two-level bootstrap)"
    return how


def measured(record: Mapping, key: str, point, scale: float = 1.0):
    """``point`` as a :class:`Measured` cell with the record's interval of estimate ``key`` (scaled like the
    point) when the record has one and ``point`` is a number; otherwise ``point`` as it is."""
    est = (record.get("estimates") or {}).get(key) or {}
    if isinstance(point, bool) or not isinstance(point, (int, float)) or est.get("low") is None \
            or est.get("high") is None:
        return point
    spread = est.get("seed_sd")
    return Measured(point, scale * float(est["low"]), scale * float(est["high"]), interval_how(record),
                    None if spread is None else abs(scale) * float(spread), est.get("seeds"))


def paired_gain(record: Mapping, base: Mapping, key: str, point, scale: float = 1.0):
    """``point`` (``record - base`` of estimate ``key``) with the interval of the paired replicate differences
    when both records were resampled alike (same units, seed and resamples); else ``point`` as it is."""
    a, b = record.get("bootstrap") or {}, base.get("bootstrap") or {}
    same = all(a.get(k) is not None and a.get(k) == b.get(k) for k in ("units_digest", "seed", "resamples"))
    ra, rb = (a.get("replicates") or {}).get(key), (b.get("replicates") or {}).get(key)
    if isinstance(point, bool) or not isinstance(point, (int, float)) or not same or not ra or not rb:
        return point
    from medsynth.stats import percentile_interval

    diffs = [x - y if x is not None and y is not None else None for x, y in zip(ra, rb)]
    low, high = percentile_interval(diffs, float(a.get("level", 0.95)))
    if low is None:
        return point
    return Measured(point, scale * low, scale * high, interval_how(record) + ", paired with the same resamples of "
                    "the baseline")


def fd_value(metrics: Mapping, key: str):
    """The value (with its interval), or the short reason it is missing (the full hint, e.g. where to put
    weights, is in the JSON)."""
    entry = metrics.get(key) or {}
    if entry.get("value") is not None:
        return measured(metrics, key, entry["value"])
    return str(entry.get("status", NOT_MEASURED)).split(" (")[0]


def measured_row(row: Mapping | None, key: str, point, scale: float = 1.0):
    """``point`` with the interval a table row (a CSV record) gives in ``<key>_low`` / ``<key>_high`` and
    ``interval`` (the VAE's reconstruction table); otherwise ``point`` as it is."""
    import math

    if row is None or isinstance(point, bool) or not isinstance(point, (int, float)):
        return point
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
        return point
    return Measured(point, scale * float(low), scale * float(high), str(row.get("interval", "bootstrap interval")))


def value_or_reason(r: Mapping | None, key: str, scale: float = 1.0):
    """``scale x r[key]``; why it is missing otherwise (object not in the study, or absent from the reference)."""
    if r is None:
        return NOT_MEASURED
    value = r.get(key)
    if value is None or (isinstance(value, float) and value != value):
        return "no reference voxels" if r.get("status") == "empty" or not r.get("n_reference", 1) else "undefined"
    return scale * float(value)


def downstream_scale(e: Mapping) -> str:
    """What a downstream record was trained and scored on."""
    return (f"train {e['n_train_real']} real + {e['n_train_synthetic']} synthetic slices, "
            f"{e['steps']} steps; test {e['n_test']} real slices")
