"""Rule ``reader_scores``: the readers' answers scored against the key, in the papers' layouts.

* Visual Turing test (ViCTr): per reader, accuracy of real / synthetic with its exact (Clopper-Pearson)
  binomial interval, sensitivity (synthetic cases called synthetic) and specificity (real cases called real).
* Match (MedSyn2 Table 4): per reader and per kind of case (real / synthetic), how many cases match,
  partially match or do not match the report and mask they were conditioned on.
* Match by pathology (MedSyn2 Table 8): the same counts per reader x kind of case x pathology the case was
  drawn for (a kit drawn per pathology, config ``readers.pathologies``), in the columns of
  config/paper_reported/medsyn2_table8.csv.
* Agreement: Cohen's kappa between every two readers on the cases both answered, per question.

Without answer files every table is one row saying "no reader answers yet".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medsynth.readers.answers import read_answers
from medsynth.readers.page import MATCH_ANSWERS, TURING_ANSWERS
from medsynth.tables.render import Measured, write_table

__all__ = ["NO_ANSWERS", "NOT_BY_PATHOLOGY", "TABLES", "clopper_pearson", "cohen_kappa", "turing_table",
           "match_table", "match_by_pathology_table", "agreement_table", "score_answers"]

NO_ANSWERS = "no reader answers yet"
NOT_BY_PATHOLOGY = "kit not drawn per pathology (readers.pathologies is []): no pathology column in the key"
#: answer -> column of the per-pathology table (the columns of config/paper_reported/medsyn2_table8.csv)
MATCH_COLUMNS = {"match": "match", "partial match": "partial_match", "not match": "not_match"}
ALL_READERS = "all readers (pooled)"
#: output name -> (title, notes) of each table
TABLES = {
    "visual_turing": ("Reader study: Visual Turing test (ViCTr) - real or synthetic?",
                      ["accuracy: correct real / synthetic answers over the cases answered; sensitivity: synthetic "
                       "cases called synthetic; specificity: real cases called real (1 - sensitivity is the share "
                       "of synthetic cases taken for real)",
                       f"{ALL_READERS}: every answer of every reader counted as one trial (readers share cases, so "
                       "its interval is too narrow)"]),
    "match": ("Reader study: match of each case to its report and mask (MedSyn2 Table 4)",
              ["per reader and kind of case: cases answered match / partial match / not match; % of the answered"]),
    "match_by_pathology": ("Reader study: match of each case to its report and mask per pathology (MedSyn2 Table 8)",
                           ["per reader, kind of case (data) and pathology the case was drawn for: cases answered "
                            "match / partial match / not match"]),
    "agreement": ("Reader study: agreement between readers (Cohen's kappa)",
                  ["cases: answered by both readers; observed: share of identical answers; kappa: unweighted "
                   "Cohen's kappa (1 = perfect, 0 = chance agreement)"]),
}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion ``k / n``."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def _proportion(k: int, n: int, level: float, what: str) -> Measured | str:
    if n == 0:
        return f"no {what} answered"
    low, high = clopper_pearson(k, n, level)
    return Measured(k / n, low, high, f"{level:.0%} exact (Clopper-Pearson) binomial interval over the cases answered")


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted Cohen's kappa of two readers' answers to the same cases (NaN when chance agreement is 1)."""
    import warnings

    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(cohen_kappa_score(list(a), list(b), labels=list(labels)))


def _with_truth(answers: pd.DataFrame, key: pd.DataFrame) -> pd.DataFrame:
    return answers.merge(key[["case_id", "truth"]], on="case_id", how="left", validate="many_to_one")


def _turing_row(reader: str, part: pd.DataFrame, level: float) -> dict:
    part = part[part["turing"] != ""]
    correct = part["turing"] == part["truth"]
    synthetic, real = part["truth"] == "synthetic", part["truth"] == "real"
    return {"reader": reader, "answered": int(len(part)), "real cases": int(real.sum()),
            "synthetic cases": int(synthetic.sum()), "correct": int(correct.sum()),
            "accuracy": _proportion(int(correct.sum()), len(part), level, "case"),
            "sensitivity": _proportion(int((correct & synthetic).sum()), int(synthetic.sum()), level, "synthetic case"),
            "specificity": _proportion(int((correct & real).sum()), int(real.sum()), level, "real case")}


def turing_table(answers: pd.DataFrame, key: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per reader (and the pooled row when there are several): the Visual Turing scores."""
    if answers.empty:
        return pd.DataFrame({"reader": [NO_ANSWERS]})
    scored = _with_truth(answers, key)
    rows = [_turing_row(reader, part, level) for reader, part in scored.groupby("reader_id", sort=True)]
    if len(rows) > 1:
        rows.append(_turing_row(ALL_READERS, scored, level))
    return pd.DataFrame(rows)


def match_table(answers: pd.DataFrame, key: pd.DataFrame) -> pd.DataFrame:
    """Rows: reader x kind of case (real, synthetic); counts and shares of match / partial match / not match."""
    if answers.empty:
        return pd.DataFrame({"reader": [NO_ANSWERS]})
    scored = _with_truth(answers, key)
    scored = scored[scored["match"] != ""]
    rows = []
    for reader in sorted(set(answers["reader_id"])):
        for truth in TURING_ANSWERS:
            part = scored[(scored["reader_id"] == reader) & (scored["truth"] == truth)]
            counts = {a: int((part["match"] == a).sum()) for a in MATCH_ANSWERS}
            row = {"reader": reader, "cases": truth, "answered": int(len(part)), **counts}
            row.update({f"{a} %": (100.0 * counts[a] / len(part) if len(part) else float("nan")) for a in MATCH_ANSWERS})
            rows.append(row)
    return pd.DataFrame(rows)


def _pathology_counts(scored: pd.DataFrame, reader: str, truth: str, pathology: str) -> dict:
    part = scored[(scored["reader_id"] == reader) & (scored["truth"] == truth) & (scored["pathology"] == pathology)]
    return {"reader": reader, "data": truth, "pathology": pathology,
            **{column: int((part["match"] == answer).sum()) for answer, column in MATCH_COLUMNS.items()}}


def match_by_pathology_table(answers: pd.DataFrame, key: pd.DataFrame) -> pd.DataFrame:
    """Rows: reader x kind of case (``data``: real, synthetic) x pathology (sorted); columns ``match``,
    ``partial_match``, ``not_match`` (cases answered so). One row saying why when there are no answers or the
    key has no ``pathology`` column (a kit not drawn per pathology)."""
    if answers.empty:
        return pd.DataFrame({"reader": [NO_ANSWERS]})
    if "pathology" not in key or not (key["pathology"] != "").any():
        return pd.DataFrame({"reader": [NOT_BY_PATHOLOGY]})
    scored = answers.merge(key[["case_id", "truth", "pathology"]], on="case_id", how="left", validate="many_to_one")
    scored = scored[scored["match"] != ""]
    pathologies = sorted(set(key["pathology"]) - {""})
    return pd.DataFrame([_pathology_counts(scored, reader, truth, pathology)
                         for reader in sorted(set(answers["reader_id"])) for truth in TURING_ANSWERS
                         for pathology in pathologies])


def agreement_table(answers: pd.DataFrame) -> pd.DataFrame:
    """Cohen's kappa of every two readers, per question, on the cases both answered."""
    if answers.empty:
        return pd.DataFrame({"reader A": [NO_ANSWERS]})
    readers = sorted(set(answers["reader_id"]))
    if len(readers) < 2:
        return pd.DataFrame({"reader A": [f"needs two readers (answers from {readers[0]} only)"]})
    rows = []
    for a, b in itertools.combinations(readers, 2):
        for question, labels in (("real or synthetic", TURING_ANSWERS), ("match", MATCH_ANSWERS)):
            column = "turing" if question == "real or synthetic" else "match"
            left = answers[(answers["reader_id"] == a) & (answers[column] != "")].set_index("case_id")[column]
            right = answers[(answers["reader_id"] == b) & (answers[column] != "")].set_index("case_id")[column]
            both = sorted(set(left.index) & set(right.index))
            x, y = left.loc[both].tolist(), right.loc[both].tolist()
            kappa: float | str = cohen_kappa(x, y, labels) if both else "no case answered by both"
            if isinstance(kappa, float) and np.isnan(kappa):
                kappa = "undefined: chance agreement is 1 (one answer to every case)"
            rows.append({"reader A": a, "reader B": b, "question": question, "cases": len(both),
                         "observed": float(np.mean(np.array(x) == np.array(y))) if both else float("nan"),
                         "kappa": kappa})
    return pd.DataFrame(rows)


def score_answers(answer_files: Sequence[str | Path], key_path: str | Path, outputs: Mapping[str, tuple[str, str]],
                  level: float = 0.95, answers_folder: str = "") -> dict[str, pd.DataFrame]:
    """Read the answer files, score them against ``key_path`` and write the tables of :data:`TABLES` named in
    ``outputs`` (name -> (csv path, md path)). Returns every table."""
    key = pd.read_csv(key_path, dtype=str, keep_default_na=False)
    answers = read_answers(answer_files, key)
    tables = {"visual_turing": turing_table(answers, key, level), "match": match_table(answers, key),
              "match_by_pathology": match_by_pathology_table(answers, key), "agreement": agreement_table(answers)}
    source = (f"{len(answer_files)} answer files ({', '.join(sorted(Path(p).name for p in answer_files))})"
              if answer_files else f"no answer file yet in {answers_folder or 'the answers folder'}")
    kit = key["kit_id"].iloc[0] if len(key) else "?"
    for name, table in tables.items():
        if name not in outputs:
            continue
        title, notes = TABLES[name]
        read = f"kit {kit}: {len(key)} cases; read from {source}"
        write_table(table, *outputs[name], title, [read] if answers.empty else [*notes, read])
    return tables
