"""The claims file (``config/claims.yaml``): read, checked, and turned into :class:`Claim` objects.

Every error names the claim (its ``id``, or its position when the id itself is missing) and the key,
e.g. ``claim 'victr_ewc_stage1': direction: must be one of lower, higher, equivalent (got 'down')``.
The format is documented at the top of ``config/claims.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from medsynth.names import TASK_SEPARATOR

from .effects import KINDS

__all__ = ["CELL_READINGS", "DIRECTIONS", "Claim", "Claims", "ClaimsError", "Published", "RecordRef", "Reproduced",
           "Search", "TextStatement", "fill_roles", "load_claims", "parse_claims", "study_roles"]

DIRECTIONS = ("lower", "higher", "equivalent", "at_most", "at_least")
#: how a published cell is read: a number, or the first / the sum of the terms of ``"198+15"``
CELL_READINGS = ("number", "first_term", "sum")


class ClaimsError(ValueError):
    """A claims file that does not follow the format; the message names the claim and the key."""


@dataclass(frozen=True)
class RecordRef:
    """One record of the study: a sampling run's metrics (model, run; ``None`` = default run), a
    downstream setting's evaluation or a downstream task's reference segmenter's."""

    model: str | None = None
    run: str | None = None
    setting: str | None = None
    #: a tumour task of the 3D path's downstream study (``volumes.downstream.tasks``; ``setting``: real | real_synth)
    task: str | None = None
    #: a downstream task's reference segmenter, ``<task>.<name>`` (``downstream.tasks.<task>.references``)
    reference: str | None = None

    @property
    def key(self) -> str:
        """The record's name in the ``records`` mapping (``metrics/victr``, ``metrics/victr/tweedie-4``,
        ``downstream/real``, ``volumes/downstream/liver_tumor/real``, ``downstream_reference/semiseg.medpseg``)."""
        if self.reference is not None:
            return f"downstream_reference/{self.reference}"
        if self.task is not None:
            return f"volumes/downstream/{self.task}/{self.setting}"
        if self.setting is not None:
            return f"downstream/{self.setting}"
        return f"metrics/{self.model}" + (f"/{self.run}" if self.run else "")

    def describe(self) -> str:
        """Short words for the table (``victr tweedie-4``, ``victr (default run)``, ``downstream real``)."""
        if self.reference is not None:
            return f"reference segmenter {self.reference}"
        if self.task is not None:
            return f"tumour task {self.task} {self.setting}"
        if self.setting is not None:
            return f"downstream {self.setting}"
        return f"{self.model} {self.run}" if self.run else f"{self.model} (default run)"


@dataclass(frozen=True)
class TextStatement:
    """Numbers the paper's text states for a claim, in the published table's units."""

    says: str
    value: float | None = None
    a: float | None = None
    b: float | None = None
    #: half-width within which ``value`` counts as stated (default: half a unit of its last digit)
    rounding: float | None = None


@dataclass(frozen=True)
class Search:
    """Where to look when the text's number matches no named cell: columns varied for a and b together,
    columns varied for b alone, and the row of b to start from when the paper never names it."""

    vary_both: tuple[str, ...] = ()
    vary_b: tuple[str, ...] = ()
    b: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Published:
    """The paper's own comparison: rows ``a`` and ``b`` of one ``config/paper_reported`` table."""

    table: str | None = None
    value: str | None = None
    a: Mapping[str, str] | None = None
    b: Mapping[str, str] | None = None
    #: who the baseline is, in the paper's words, when it names no row for it
    baseline: str | None = None
    cell: str = "number"
    #: cells are exact counts (steps), not rounded measurements
    exact: bool = False
    #: multiplies the cells (e.g. 0.01: a table in % against a study's 0-1 fraction)
    scale: float = 1.0
    text: TextStatement | None = None
    search: Search | None = None
    #: columns over which the claim is said to hold "consistently" (a and b varied together)
    across: tuple[str, ...] = ()
    #: why the paper's own numbers cannot give this effect (then no table / rows)
    not_derivable: str | None = None


@dataclass(frozen=True)
class Reproduced:
    """The study's side: the metric of records ``a`` and ``b``, or why the study cannot measure it."""

    metric: str | None = None
    a: RecordRef | None = None
    b: RecordRef | None = None
    absent: str | None = None


@dataclass(frozen=True)
class Claim:
    """One headline claim of a paper, as data."""

    id: str
    paper: str
    claim: str
    where: str
    kind: str
    direction: str
    tolerance: float
    tolerance_why: str
    published: Published
    reproduced: Reproduced
    note: str = ""


@dataclass(frozen=True)
class Claims:
    """The claims of one file and the seed that pairs replicates of unpaired comparisons."""

    claims: tuple[Claim, ...]
    unpaired_seed: int

    def __iter__(self) -> Iterator[Claim]:
        return iter(self.claims)

    def __len__(self) -> int:
        return len(self.claims)


class _Where:
    """Raises :class:`ClaimsError` with the claim's name and a key path."""

    def __init__(self, claim: str):
        self.claim = claim

    def fail(self, key: str, why: str):
        raise ClaimsError(f"claim {self.claim}: {key}: {why}")

    def keys(self, section: Mapping, key: str, allowed: set[str], required: set[str] = frozenset()) -> None:
        if not isinstance(section, Mapping):
            self.fail(key, f"must be a mapping, got {section!r}")
        unknown = sorted(set(section) - allowed)
        if unknown:
            self.fail(f"{key}.{unknown[0]}" if key else unknown[0],
                      f"unknown key (allowed: {', '.join(sorted(allowed))})")
        missing = sorted(required - set(section))
        if missing:
            self.fail(f"{key}.{missing[0]}" if key else missing[0], "required key is missing")

    def text(self, section: Mapping, key: str, path: str, optional: bool = False) -> str | None:
        value = section.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"must be non-empty text, got {value!r}")
        return value

    def number(self, section: Mapping, key: str, path: str, optional: bool = True) -> float | None:
        value = section.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, f"must be a number, got {value!r}")
        return float(value)

    def row(self, value, path: str) -> dict[str, str]:
        if not isinstance(value, Mapping) or not value:
            self.fail(path, f"must be a non-empty mapping column: value, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}

    def columns(self, value, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            self.fail(path, f"must be a list of column names, got {value!r}")
        return tuple(value)


def _text(w: _Where, raw) -> TextStatement | None:
    if raw is None:
        return None
    w.keys(raw, "published.text", {"says", "value", "a", "b", "rounding"}, {"says"})
    numbers = {k: w.number(raw, k, f"published.text.{k}") for k in ("value", "a", "b", "rounding")}
    if all(numbers[k] is None for k in ("value", "a", "b")):
        w.fail("published.text", "states no number: give value, a or b (or leave text out)")
    return TextStatement(says=w.text(raw, "says", "published.text.says"), **numbers)


def _search(w: _Where, raw) -> Search | None:
    if raw is None:
        return None
    w.keys(raw, "published.search", {"vary_both", "vary_b", "b"})
    search = Search(w.columns(raw.get("vary_both"), "published.search.vary_both"),
                    w.columns(raw.get("vary_b"), "published.search.vary_b"),
                    w.row(raw["b"], "published.search.b") if raw.get("b") is not None else None)
    if not search.vary_both and not search.vary_b:
        w.fail("published.search", "varies nothing: give vary_both and/or vary_b")
    return search


def _published(w: _Where, raw) -> Published:
    w.keys(raw, "published", {"table", "value", "a", "b", "baseline", "cell", "exact", "scale", "text", "search",
                              "across", "not_derivable"})
    text, search = _text(w, raw.get("text")), _search(w, raw.get("search"))
    if raw.get("not_derivable") is not None:
        extra = sorted(set(raw) & {"table", "value", "a", "b", "cell", "search", "across"})
        if extra:
            w.fail(f"published.{extra[0]}", "not_derivable claims name no table rows")
        return Published(not_derivable=w.text(raw, "not_derivable", "published.not_derivable"), text=text,
                         scale=w.number(raw, "scale", "published.scale") or 1.0)
    for key in ("table", "value", "a"):
        if key not in raw:
            w.fail(f"published.{key}", "required key is missing (or give published.not_derivable)")
    if raw.get("b") is None and raw.get("baseline") is None:
        w.fail("published.b", "give row b, or say who the unnamed baseline is in published.baseline")
    cell = raw.get("cell", "number")
    if cell not in CELL_READINGS:
        w.fail("published.cell", f"must be one of {', '.join(CELL_READINGS)} (got {cell!r})")
    if not isinstance(raw.get("exact", False), bool):
        w.fail("published.exact", f"must be true or false (got {raw['exact']!r})")
    if raw.get("across") and raw.get("b") is None:
        w.fail("published.across", "needs row b: the pairs vary a and b together")
    scale = w.number(raw, "scale", "published.scale")
    if scale is not None and scale <= 0:
        w.fail("published.scale", f"must be positive (got {scale})")
    return Published(table=w.text(raw, "table", "published.table"), value=w.text(raw, "value", "published.value"),
                     a=w.row(raw["a"], "published.a"),
                     b=w.row(raw["b"], "published.b") if raw.get("b") is not None else None,
                     baseline=w.text(raw, "baseline", "published.baseline", optional=True), cell=cell,
                     exact=raw.get("exact", False), scale=scale or 1.0, text=text, search=search,
                     across=w.columns(raw.get("across"), "published.across"))


def _ref(w: _Where, raw, path: str) -> RecordRef:
    w.keys(raw, path, {"model", "run", "setting", "task", "reference"})
    if "reference" in raw:
        if set(raw) != {"reference"}:
            w.fail(path, "a reference segmenter's record is named by reference alone (<task>.<name>)")
        return RecordRef(reference=w.text(raw, "reference", f"{path}.reference"))
    if ("model" in raw) == ("setting" in raw):
        w.fail(path, "give either model (with optional run), setting (with optional task) or reference")
    if "setting" in raw:
        if "run" in raw:
            w.fail(f"{path}.run", "a downstream setting has no run")
        task = w.text(raw, "task", f"{path}.task", optional=True)
        setting = w.text(raw, "setting", f"{path}.setting")
        if task is not None and setting not in ("real", "real_synth"):
            w.fail(f"{path}.setting", "a tumour task's setting is real or real_synth")
        return RecordRef(setting=setting, task=task)
    return RecordRef(model=w.text(raw, "model", f"{path}.model"), run=w.text(raw, "run", f"{path}.run", optional=True))


def _reproduced(w: _Where, raw) -> Reproduced:
    w.keys(raw, "reproduced", {"metric", "a", "b", "absent"})
    if raw.get("absent") is not None:
        if set(raw) - {"absent"}:
            w.fail("reproduced.absent", "an absent comparison names no records or metric")
        return Reproduced(absent=w.text(raw, "absent", "reproduced.absent"))
    w.keys(raw, "reproduced", {"metric", "a", "b"}, {"metric", "a", "b"})
    return Reproduced(metric=w.text(raw, "metric", "reproduced.metric"), a=_ref(w, raw["a"], "reproduced.a"),
                      b=_ref(w, raw["b"], "reproduced.b"))


_CLAIM_KEYS = {"id", "paper", "claim", "where", "kind", "direction", "tolerance", "tolerance_why", "published",
               "reproduced", "note"}


def _claim(raw, position: int) -> Claim:
    name = raw.get("id") if isinstance(raw, Mapping) else None
    w = _Where(repr(name) if isinstance(name, str) else f"#{position + 1}")
    w.keys(raw, "", _CLAIM_KEYS, _CLAIM_KEYS - {"note"})
    kind, direction = raw["kind"], raw["direction"]
    if kind not in KINDS:
        w.fail("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    if direction not in DIRECTIONS:
        w.fail("direction", f"must be one of {', '.join(DIRECTIONS)} (got {direction!r})")
    tolerance = w.number(raw, "tolerance", "tolerance", optional=False)
    if tolerance < 0 or (direction in ("equivalent", "at_most", "at_least") and tolerance == 0):
        w.fail("tolerance", f"must be >= 0, and > 0 for an equivalence (got {tolerance})")
    return Claim(id=w.text(raw, "id", "id"), paper=w.text(raw, "paper", "paper"), claim=w.text(raw, "claim", "claim"),
                 where=w.text(raw, "where", "where"), kind=kind, direction=direction, tolerance=tolerance,
                 tolerance_why=w.text(raw, "tolerance_why", "tolerance_why"),
                 published=_published(w, raw["published"]), reproduced=_reproduced(w, raw["reproduced"]),
                 note=w.text(raw, "note", "note", optional=True) or "")


def parse_claims(data: Mapping) -> Claims:
    """Claims from the loaded YAML document (``settings.unpaired_seed`` + ``claims`` list)."""
    if not isinstance(data, Mapping) or set(data) != {"settings", "claims"}:
        raise ClaimsError(f"claims file: top level must have exactly the keys settings and claims, got "
                          f"{sorted(data) if isinstance(data, Mapping) else data!r}")
    seed = (data["settings"] or {}).get("unpaired_seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ClaimsError(f"claims file: settings.unpaired_seed must be an integer, got {seed!r}")
    if not isinstance(data["claims"], list) or not data["claims"]:
        raise ClaimsError("claims file: claims must be a non-empty list")
    claims = tuple(_claim(raw, i) for i, raw in enumerate(data["claims"]))
    seen: set[str] = set()
    for c in claims:
        if c.id in seen:
            raise ClaimsError(f"claim {c.id!r}: id: used by more than one claim")
        seen.add(c.id)
    return Claims(claims, seed)


#: keys of a claim whose string values may name a study's model by its role (``${medsyn2_model}``)
ROLE_KEYS = ("model", "setting", "reference")


def fill_roles(node, roles: Mapping[str, str], where: str = "claims file"):
    """``node`` with every ``model`` / ``setting`` / ``reference`` string's ``${role}`` placeholders replaced by
    ``roles`` (the study's ``tables.<role>``: which of its models plays that part, e.g. ``medsyn2_model``); an
    unknown role is a :class:`ClaimsError`."""
    from string import Template

    if isinstance(node, Mapping):
        out = {}
        for key, value in node.items():
            if key in ROLE_KEYS and isinstance(value, str) and "$" in value:
                try:
                    value = Template(value).substitute(roles)
                except (KeyError, ValueError) as err:
                    raise ClaimsError(f"{where}: {key} {value!r} names no role of the study ({', '.join(sorted(roles))}):"
                                      f" {err}") from None
            out[key] = fill_roles(value, roles, where)
        return out
    if isinstance(node, list):
        return [fill_roles(v, roles, where) for v in node]
    return node


def load_claims(path: str | Path, roles: Mapping[str, str] | None = None) -> Claims:
    """Read and check a claims file, its role placeholders filled from ``roles`` (:func:`fill_roles`; default
    the schema's ``tables`` defaults); :class:`ClaimsError` names the claim and key that are wrong."""
    with open(path) as f:
        data = yaml.safe_load(f)
    if roles is None:
        from medsynth.settings import section

        roles = study_roles(section("tables", {}))
    try:
        return parse_claims(fill_roles(data, roles, str(path)))
    except ClaimsError as err:
        raise ClaimsError(f"{path}: {err}") from None


def study_roles(tables: Mapping) -> dict[str, str]:
    """The roles a claims file may name (``${medsyn2_model}``, ``${meddiff_model}``, ``${medsyn2_table5}``: the
    prefix of MedSyn2 Table 5's downstream settings, "" or "<task>."), from config ``tables``."""
    task = tables["medsyn2_table5_task"]
    return {"medsyn2_model": str(tables["medsyn2_model"]), "meddiff_model": str(tables["meddiff_model"]),
            "medsyn2_table5": "" if task is None else f"{task}{TASK_SEPARATOR}"}
