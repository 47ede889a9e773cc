"""benchmarks/gpu_check.py on the CPU with tiny sizes: the four papers' training step and sampler beside the
bare loop, one row each with finite images/s and their ratio; a generator that cannot be built fails the run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PAPERS = ["victr", "meddiff_ft", "medsyn2", "maisi_v2"]


def test_tiny_cpu_run_has_a_row_per_paper_with_finite_rates_and_ratios(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--scale", "tiny", "--threads", "1", "--warmup", "1",
         "--iters", "2", "--sample-iters", "1", "--budget-s", "60", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "random weights (nothing downloaded)" in proc.stdout
    report = json.loads(out.read_text())
    assert (report["device"], report["scale"], report["dtype"]) == ("cpu", "tiny", "fp32")
    assert report["failures"] == []
    assert [row["paper"] for row in report["rows"]] == PAPERS
    for row in report["rows"]:
        assert "error" not in row, row
        for phase in ("train", "sample"):
            r = row[phase]
            ours, bare = r["ours"]["images_per_s"], r["bare"]["images_per_s"]
            assert math.isfinite(ours) and ours > 0 and math.isfinite(bare) and bare > 0, (row["paper"], phase, r)
            assert math.isclose(r["ratio"], ours / bare, rel_tol=1e-9)
            assert r["ours"]["iters"] >= 1 and r["bare"]["iters"] >= 1
        assert math.isfinite(row["train"]["ours"]["loss"]) and math.isfinite(row["train"]["bare"]["loss"])
        assert row["sample"]["ours"]["nfe"] == row["sample"]["bare"]["nfe"] >= 1
        printed = [line for line in proc.stdout.splitlines() if line.startswith(row["paper"] + " ")]
        assert [line.split()[1] for line in printed] == ["train", "sample"]
    assert {row["backbone"] for row in report["rows"]} == {"unet2d_condition", "medsyn2_dit", "maisi_unet3d"}
    assert [row["sampler"] for row in report["rows"]] == ["tweedie-2", "ddim-3", "euler-2", "euler-3"]


def test_a_generator_that_cannot_be_built_is_named_and_the_run_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # restored afterwards (the script sets it for --device cpu)
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    papers = module.papers

    def broken(scale: str, cuda: bool = True):
        specs = papers(scale, cuda)
        victr = specs["victr"]
        specs["victr"] = replace(victr, backbone={**victr.backbone, "params": {**victr.backbone["params"],
                                                                               "no_such_setting": 1}})
        return specs

    monkeypatch.setattr(module, "papers", broken)
    out = tmp_path / "rows.json"
    assert module.main(["--device", "cpu", "--scale", "tiny", "--papers", "victr", "--json", str(out)]) == 2
    assert "cannot build victr's generator (unet2d_condition)" in capsys.readouterr().err
    (row,) = json.loads(out.read_text())["rows"]
    assert row["paper"] == "victr" and "no_such_setting" in row["error"]
