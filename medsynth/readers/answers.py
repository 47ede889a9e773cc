"""The answer files readers return (the page's CSV, or one typed by hand in the same columns), read and checked.

Columns: ``reader_id``, ``case_id``, ``turing`` (real / synthetic), ``match`` (match / partial match / not
match); ``kit_id`` and ``timestamp`` are optional. Values are read case-insensitively (``partial`` and
``not_match`` are accepted). A file of another kit, a case the key does not know or an unknown answer is an
error naming the file and row; an empty answer is an unanswered question. A reader who saved twice has one
answer per case: the latest (by timestamp, then by file name).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medsynth.readers.page import MATCH_ANSWERS, TURING_ANSWERS

__all__ = ["ANSWERS_READ", "REQUIRED_COLUMNS", "read_answers", "normalise_answer"]

REQUIRED_COLUMNS = ("reader_id", "case_id", "turing", "match")
#: columns of what :func:`read_answers` returns
ANSWERS_READ = ["reader_id", "case_id", "turing", "match", "timestamp", "file"]
_ALIASES = {"partial": "partial match", "not_match": "not match", "no match": "not match", "partial_match": "partial match",
            "not matched": "not match", "matched": "match"}


def normalise_answer(value: str, allowed: Sequence[str]) -> str:
    """``value`` as one of ``allowed`` (case and spacing ignored, aliases mapped); ``""`` when empty."""
    text = " ".join(str(value).strip().lower().split())
    text = _ALIASES.get(text, _ALIASES.get(text.replace(" ", "_"), text))
    if text and text not in allowed:
        raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
    return text


def _read_file(path: Path, key: pd.DataFrame) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{path}: answer file without the columns {missing} (has {list(table.columns)})")
    kit = str(key["kit_id"].iloc[0]) if len(key) else ""
    other = sorted({k for k in table.get("kit_id", pd.Series(dtype=str)) if k and k != kit})
    if other:
        raise ValueError(f"{path}: answers to kit {', '.join(other)}, not to this kit ({kit}); score them with their own key")
    unknown = sorted(set(table["case_id"]) - set(key["case_id"]))
    if unknown:
        raise ValueError(f"{path}: cases {unknown[:5]} are not in the key")
    rows = []
    for i, row in enumerate(table.to_dict("records"), start=2):
        try:
            turing = normalise_answer(row["turing"], TURING_ANSWERS)
            match = normalise_answer(row["match"], MATCH_ANSWERS)
        except ValueError as err:
            raise ValueError(f"{path} line {i}: {err}") from None
        if not (turing or match):
            continue
        reader = str(row["reader_id"]).strip()
        if not reader:
            raise ValueError(f"{path} line {i}: no reader_id")
        rows.append({"reader_id": reader, "case_id": row["case_id"], "turing": turing, "match": match,
                     "timestamp": str(row.get("timestamp", "")).strip(), "file": path.name})
    return pd.DataFrame(rows, columns=ANSWERS_READ)


def read_answers(paths: Sequence[str | Path], key: pd.DataFrame) -> pd.DataFrame:
    """One row per (reader, case) answered in the files ``paths``: ``reader_id``, ``case_id``, ``turing``,
    ``match`` (``""`` where unanswered), ``timestamp``, ``file``; checked against ``key`` (``key.csv``)."""
    tables = [t for t in (_read_file(Path(p), key) for p in sorted(paths, key=lambda p: Path(p).name)) if len(t)]
    answers = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ANSWERS_READ)
    answers = answers.assign(order=range(len(answers)))
    answers = answers.sort_values(["timestamp", "order"], kind="stable")
    latest = answers.drop_duplicates(["reader_id", "case_id"], keep="last").drop(columns="order")
    return latest.sort_values(["reader_id", "case_id"], kind="stable").reset_index(drop=True)

