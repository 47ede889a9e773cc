"""Rule scripts are glue: each runs one task of the task module of its rule file; the per-case helper."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pandas as pd
import pytest

from medsynth.cases import SHARD_TABLE, CaseRejected, process_cases, read_shard_table

REPO = Path(__file__).resolve().parents[1]


def _rule_scripts() -> list[tuple[str, str, str]]:
    """(rule file stem, rule name, script name) of every rule with a script."""
    found = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            if m := re.match(r"(?:rule|checkpoint) (\w+):", line):
                rule = m.group(1)
            if m := re.match(r'\s+"\.\./scripts/(\w+)\.py"', line):
                found.append((smk.stem, rule, m.group(1)))
    return found


@pytest.mark.parametrize("stem,rule,script", _rule_scripts())
def test_each_rule_script_runs_one_task_of_its_rule_files_module(stem, rule, script):
    text = (REPO / "scripts" / f"{script}.py").read_text()
    calls = re.findall(r'run_rule\(snakemake, "(\w+):(\w+)"\)', text)
    assert calls == [(stem, rule)], f"scripts/{script}.py should run tasks.{stem}:{rule}, runs {calls}"
    fn = getattr(importlib.import_module(f"medsynth.tasks.{stem}"), rule)
    assert callable(getattr(fn, "seed_of", None)), f"tasks.{stem}.{rule} is not marked @task"
    code = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", '"""'))]
    assert len(code) <= 6, f"scripts/{script}.py is more than glue"


def test_every_script_belongs_to_a_rule():
    used = {script for _, _, script in _rule_scripts()}
    assert {p.stem for p in (REPO / "scripts").glob("*.py")} == used


def _process(case: dict, tmp: Path) -> dict:
    path = tmp / "images" / f"{case['case_id']}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(case["case_id"])  # written before the check: a failing case must leave it behind
    if case["kind"] == "reject":
        raise CaseRejected("too small", {"measured": 3})
    if case["kind"] == "crash":
        raise RuntimeError("boom")
    return {"path": str(path), "measured": 9}


def test_process_cases_quarantines_each_failure_with_its_reason_and_keeps_the_rest(tmp_path):
    cases = [{"case_id": "a", "kind": "ok"}, {"case_id": "b", "kind": "reject"}, {"case_id": "c", "kind": "crash"}]
    out = tmp_path / "shard-000"
    table = process_cases(cases, out, _process, columns=("case_id",),
                          error_reason=lambda err: f"failed: {err}", path_keys=("path",), progress=False)
    assert list(table["status"]) == ["ok", "quarantined", "quarantined"]
    assert list(table["reason"]) == ["", "too small", "failed: boom"]
    assert table.loc[1, "measured"] == 3  # what the check measured stays in the row
    assert table.loc[0, "path"] == str(out / "images" / "a.txt") and Path(table.loc[0, "path"]).exists()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.txt"]
    on_disk = pd.read_csv(out / SHARD_TABLE, keep_default_na=False)
    assert list(on_disk["case_id"]) == ["a", "b", "c"]


def test_a_shard_with_no_case_writes_its_header_and_reads_back_empty(tmp_path):
    out = tmp_path / "shard-002"
    process_cases([], out, _process, columns=("case_id", "dataset"), error_reason=str, progress=False)
    assert (out / SHARD_TABLE).read_text().strip() == "case_id,dataset,status,reason"
    table = read_shard_table(out)
    assert table.empty and list(table.columns) == ["case_id", "dataset", "status", "reason"]


def test_a_headerless_shard_table_is_a_clear_error(tmp_path):
    (tmp_path / SHARD_TABLE).write_text("\n")  # what an empty shard used to be
    with pytest.raises(ValueError, match="has no header.*delete"):
        read_shard_table(tmp_path)


def test_process_cases_leaves_no_partial_shard_when_the_shard_fails(tmp_path):
    def finish(tmp):
        raise OSError("disk full")

    out = tmp_path / "shard-001"
    with pytest.raises(OSError, match="disk full"):
        process_cases([{"case_id": "a", "kind": "ok"}], out, _process, columns=("case_id",),
                      error_reason=str, progress=False, finish=finish)
    assert not out.exists() and not list(tmp_path.iterdir())
