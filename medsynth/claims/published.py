"""A claim's published effect, recomputed from the paper's own table, and the text checked against it.

The effect comes from rows ``a`` and ``b`` of a ``config/paper_reported`` table. Each number the text
states (``value``: the effect; ``a`` / ``b``: the compared numbers) is held against it: it *agrees* when
it lies within half a unit of its last digit (or ``text.rounding``) of what the cells give, the cells
themselves being rounded to their last digit (unless ``exact``). The check is

- ``consistent``: every stated number agrees;
- ``inconsistent: text says X, tables give Y``: a stated number disagrees with the named rows (and,
  when ``search`` is given, it agrees with other cells, which are named);
- ``not derivable: <why>``: the paper's numbers cannot give it: no row, the baseline is never named,
  the stated number matches no cell of the searched rows, or the paper has no number at all;
- ``no number in text``: the claim is the table's alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medsynth.tables.paper import load_reported, reported
from medsynth.tables.render import NOT_REPORTED

from .effects import effect, effect_bounds, half_unit
from .spec import Claim, Published
from .verdict import REPRODUCED, verdict

__all__ = ["PublishedEffect", "missing_rows", "published_effect"]


@dataclass(frozen=True)
class PublishedEffect:
    """The recomputed effect (``None`` when not derivable), the rows it came from, and the text's check."""

    value: float | None
    rows: str
    check: str


@dataclass(frozen=True)
class _Cell:
    value: float
    half: float


@dataclass(frozen=True)
class _Stated:
    """A stated number, compared in the study's units (``number``, ``half``) and shown in the paper's
    (``number / unit``)."""

    name: str
    number: float
    half: float
    unit: float


def _cell(table: pd.DataFrame, pub: Published, row: Mapping[str, str]) -> _Cell | str:
    """The cell of ``row`` as a (scaled) number with its rounding, or why it is not one."""
    raw = reported(table, pub.value, **row)
    if raw == NOT_REPORTED:
        return f"no row {dict(row)} with a {pub.value!r} value in {pub.table}"
    if isinstance(raw, str):
        if pub.cell == "number":
            return f"cell {raw!r} of {pub.table} is not a number (published.cell first_term or sum reads 'x+y')"
        try:
            terms = [float(t) for t in raw.split("+")]
        except ValueError:
            return f"cell {raw!r} of {pub.table} is not a sum of numbers"
        value = terms[0] if pub.cell == "first_term" else sum(terms)
        half = half_unit(terms[0]) if pub.cell == "first_term" else sum(half_unit(t) for t in terms)
    else:
        value, half = raw, half_unit(raw)
    return _Cell(value * pub.scale, 0.0 if pub.exact else half * pub.scale)


def missing_rows(pub: Published, paper_dir: str | Path) -> list[str]:
    """Why each named row (a, b) cannot be read from its table; empty when both can (or none is named)."""
    if pub.table is None:
        return []
    table = load_reported(paper_dir, pub.table)
    if table.empty:
        return [f"no table {pub.table}.csv in {paper_dir}"]
    return [c for c in (_cell(table, pub, r) for r in (pub.a, pub.b) if r is not None) if isinstance(c, str)]


def _stated(claim: Claim) -> list[_Stated]:
    text, pub = claim.published.text, claim.published
    if text is None:
        return []
    out = []
    if text.value is not None:
        scale = pub.scale if claim.kind == "difference" else 1.0
        half = text.rounding if text.rounding is not None else half_unit(text.value)
        out.append(_Stated("value", text.value * scale, half * scale, scale))
    for name in ("a", "b"):
        number = getattr(text, name)
        if number is not None:
            out.append(_Stated(name, number * pub.scale, half_unit(number) * pub.scale, pub.scale))
    return out


def _quantity(kind: str, name: str, a: _Cell, b: _Cell) -> tuple[float, float, float]:
    """(point, low, high) of the stated quantity from cells ``a`` and ``b``."""
    if name == "value":
        low, high = effect_bounds(kind, a.value, a.half, b.value, b.half)
        return effect(kind, a.value, b.value), low, high
    cell = a if name == "a" else b
    return cell.value, cell.value - cell.half, cell.value + cell.half


def _agrees(stated: _Stated, low: float, high: float) -> bool:
    return stated.number - stated.half <= high and stated.number + stated.half >= low


def _label(row: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.items())


def _combos(table: pd.DataFrame, columns: tuple[str, ...]) -> list[dict[str, str]]:
    values = [sorted({v for v in table[c] if v != ""}) if c in table.columns else [] for c in columns]
    return [dict(zip(columns, combo)) for combo in itertools.product(*values)]


def _candidates(table: pd.DataFrame, pub: Published) -> list[tuple[str, _Cell, _Cell]]:
    """Every (label, a, b) the search allows: ``vary_both`` columns changed in a and b, ``vary_b`` in b."""
    s = pub.search
    out = []
    for both in _combos(table, s.vary_both):
        for only_b in _combos(table, s.vary_b):
            a, b = {**pub.a, **both}, {**(s.b or pub.b or {}), **both, **only_b}
            ca, cb = _cell(table, pub, a), _cell(table, pub, b)
            if a != b and isinstance(ca, _Cell) and isinstance(cb, _Cell):
                out.append((_label({**both, **only_b}), ca, cb))
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _search_words(claim: Claim, table: pd.DataFrame, stated: _Stated) -> tuple[bool, str]:
    """Whether some searched cells agree with ``stated``, and which (or the closest)."""
    pub = claim.published
    found = [(label, _quantity(claim.kind, stated.name, a, b)) for label, a, b in _candidates(table, pub)]
    matches = [label for label, (_, low, high) in found if _agrees(stated, low, high)]
    if matches:
        return True, f"matches {'; '.join(matches)}"
    searched = ", ".join(pub.search.vary_both + pub.search.vary_b)
    if not found:
        return False, f"matches no cell (searched {searched}: no rows)"
    label, (point, _, _) = min(found, key=lambda f: abs(f[1][0] - stated.number))
    return False, f"matches no cell (searched {searched}; closest: {label} gives {_fmt(point / stated.unit)})"


def _check(claim: Claim, table: pd.DataFrame, a: _Cell | None, b: _Cell | None) -> str:
    pub = claim.published
    stated = _stated(claim)
    if not stated:
        return "no number in text"
    problems, worst = [], "inconsistent"
    if b is None:
        problems.append(f"baseline never named ({pub.baseline})")
        worst = "not derivable"
    for s in stated:
        named = _quantity(claim.kind, s.name, a, b) if b is not None or s.name == "a" else None
        if named is not None and _agrees(s, named[1], named[2]):
            continue
        says = f"text says {s.name} = {_fmt(s.number / s.unit)}"
        if pub.search is None:
            problems.append(f"{says}, tables give {_fmt(named[0] / s.unit)}" if named else f"{says}, not in the tables")
            worst = worst if named else "not derivable"
            continue
        matched, where = _search_words(claim, table, s)
        tables = f", the named rows give {_fmt(named[0] / s.unit)}" if named else ""
        problems.append(f"{says}{tables}; it {where}" + (" instead" if matched and named else ""))
        if not matched or not named:
            worst = "not derivable"
    return f"{worst}: " + "; ".join(problems) if problems else "consistent"


def _across(claim: Claim, table: pd.DataFrame) -> str:
    pub, held, total = claim.published, 0, 0
    for combo in _combos(table, pub.across):
        ca, cb = _cell(table, pub, {**pub.a, **combo}), _cell(table, pub, {**(pub.b or {}), **combo})
        if isinstance(ca, _Cell) and isinstance(cb, _Cell):
            value = effect(claim.kind, ca.value, cb.value)
            total += 1
            held += verdict(claim.direction, claim.tolerance, claim.kind, value, value)[0] == REPRODUCED
    return f"; holds in {held} of {total} ({' x '.join(pub.across)}) pairs" if pub.across else ""


def _rows(pub: Published, a: _Cell, b: _Cell | None) -> str:
    """``table.value [shared keys]: a = x [own keys] vs b = y [own keys]``, numbers as published."""
    other = pub.b or {}
    shared = {k: v for k, v in pub.a.items() if other.get(k) == v}
    head = f"{pub.table}.{pub.value}" + (f" [{_label(shared)}]" if shared else "")
    scaled = f" (x{pub.scale:g})" if pub.scale != 1.0 else ""
    a_words = f"a = {_fmt(a.value / pub.scale)} [{_label({k: v for k, v in pub.a.items() if k not in shared})}]"
    if b is None:
        return f"{head}: {a_words} vs an unnamed baseline ({pub.baseline}){scaled}"
    b_words = f"b = {_fmt(b.value / pub.scale)} [{_label({k: v for k, v in other.items() if k not in shared})}]"
    return f"{head}: {a_words} vs {b_words}{scaled}"


def published_effect(claim: Claim, paper_dir: str | Path) -> PublishedEffect:
    """The claim's effect from the paper's table and the check of its text (see the module's rules)."""
    pub = claim.published
    if pub.not_derivable is not None:
        return PublishedEffect(None, "", f"not derivable: {pub.not_derivable}")
    table = load_reported(paper_dir, pub.table)
    missing = missing_rows(pub, paper_dir)
    if missing:
        return PublishedEffect(None, "", f"not derivable: {'; '.join(missing)}")
    a = _cell(table, pub, pub.a)
    b = _cell(table, pub, pub.b) if pub.b is not None else None
    value = effect(claim.kind, a.value, b.value) if b is not None else None
    value = value if value is None or math.isfinite(value) else None
    return PublishedEffect(value, _rows(pub, a, b), _check(claim, table, a, b) + _across(claim, table))
