"""Replicates (config ``replicates``): names and seeds of a model's replicates, their records pooled into one
(mean, seed spread, two-level bootstrap interval), the tables that pool them and the DAG that builds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from medsynth.replicates import replicate_name, replicate_names, replicate_seed, split_replicate, with_replicate_seed
from medsynth.stats import percentile_interval, pool_records, seed_draws
from medsynth.study import Study
from medsynth.tables import write_table
from medsynth.tables.registry import build_table, table_input_files, table_params

REPO = Path(__file__).resolve().parents[1]


def _study(**overrides) -> Study:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(overrides)
    validate(config, str(REPO / "config" / "schema.yaml"))
    return Study(config, REPO)


def _record(model: str, fd: float, reps: list[float | None], status: str = "ok") -> dict:
    return {"model": model, "run": "euler-30", "n_real": 10, "n_generated": 10,
            "fd_self": {"value": fd, "extractor": "self-trained unet encoder, downstream 'real'", "status": status},
            "windowed": [{"window": "lung", "fd": fd}, {"window": "mean", "fd": 2 * fd}],
            "estimates": {"fd_self": {"value": fd, "low": min(r for r in reps if r is not None),
                                      "high": max(r for r in reps if r is not None)}},
            "bootstrap": {"resamples": len(reps), "level": 0.9, "seed": 3, "unit": "patient (6 patients)",
                          "n_units": 6, "units_digest": "abc", "replicates": {"fd_self": reps}}}


def _no_seeds(section: dict) -> dict:
    return {k: _no_seeds(v) if isinstance(v, dict) else v for k, v in section.items() if k != "seed"}


def test_replicate_names_round_trip_and_replicate_zero_is_the_model_itself():
    assert replicate_names("victr", 3) == ["victr", "victr@1", "victr@2"]
    assert replicate_names("victr", 1) == ["victr"]
    assert split_replicate("victr@2") == ("victr", 2) and split_replicate("victr") == ("victr", 0)
    assert split_replicate("lora_r8@10") == ("lora_r8", 10) and split_replicate("a@0") == ("a@0", 0)
    assert all(split_replicate(replicate_name("dit_no_conv", k)) == ("dit_no_conv", k) for k in range(4))


def test_replicate_seeds_are_distinct_streams_and_replicate_zero_keeps_every_seed():
    seeds = {replicate_seed(41, k) for k in range(5)}
    assert len(seeds) == 5 and replicate_seed(41, 0) == 41
    section = {"seed": 41, "lr": 0.1, "reflow": {"seed": 71, "run": "euler-20"}, "lora": {"rank": 4}}
    assert with_replicate_seed(section, 0) == section
    one = with_replicate_seed(section, 1)
    assert one["seed"] == replicate_seed(41, 1) and one["reflow"]["seed"] == replicate_seed(71, 1)
    assert one["lr"] == 0.1 and one["lora"] == {"rank": 4} and one["reflow"]["run"] == "euler-20"
    assert with_replicate_seed(section, 1, nested=False)["reflow"]["seed"] == 71


def test_one_replicate_is_returned_as_it_is():
    record = _record("victr", 1.0, [0.9, 1.0, 1.1, 1.2])
    assert pool_records([record]) is record


def test_pooled_record_means_the_numbers_keeps_replicate_zeros_text_and_gives_the_seed_spread():
    records = [_record("victr", 1.0, [1.0] * 8), _record("victr@1", 2.0, [2.0] * 8),
               _record("victr@2", 6.0, [6.0] * 8, status="other")]
    pooled = pool_records(records)
    assert pooled["fd_self"]["value"] == pytest.approx(3.0) and pooled["windowed"][1]["fd"] == pytest.approx(6.0)
    assert pooled["n_real"] == 10 and isinstance(pooled["n_real"], int)  # equal counts stay integers
    assert pooled["model"] == "victr" and pooled["fd_self"]["status"] == "ok"
    assert pooled["training_seeds"] == {"replicates": 3, "models": ["victr", "victr@1", "victr@2"]}
    est = pooled["estimates"]["fd_self"]
    assert est["value"] == pytest.approx(3.0) and est["seeds"] == 3
    assert est["seed_sd"] == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1))
    # no test-set noise here: every resample is the mean of three seeds drawn with replacement
    draws = seed_draws(3, 8, 3)
    expected = [float(np.mean(np.array([1.0, 2.0, 6.0])[d])) for d in draws]
    assert pooled["bootstrap"]["replicates"]["fd_self"] == pytest.approx(expected)
    assert (est["low"], est["high"]) == pytest.approx(percentile_interval(expected, 0.9))
    assert 1.0 <= est["low"] <= est["high"] <= 6.0


def test_seeds_that_agree_give_the_single_records_interval_and_a_zero_spread():
    reps = list(np.linspace(0.8, 1.2, 40))
    pooled = pool_records([_record("victr", 1.0, reps), _record("victr@1", 1.0, reps)])
    est = pooled["estimates"]["fd_self"]
    assert est["seed_sd"] == 0.0
    assert (est["low"], est["high"]) == pytest.approx(percentile_interval(reps, 0.9))


def test_a_value_missing_in_one_replicate_is_missing_in_the_pool():
    a, b = _record("victr", 1.0, [1.0, 1.1]), _record("victr@1", 1.0, [1.0, None])
    b["fd_self"]["value"] = None
    b["estimates"]["fd_self"]["value"] = None
    pooled = pool_records([a, b])
    assert pooled["fd_self"]["value"] is None and pooled["estimates"]["fd_self"]["value"] is None


def test_study_names_seeds_paths_and_table_inputs_of_replicates():
    study = _study(replicates=3)
    assert {"victr@1", "victr@2", "dit@1", "dit_no_conv@2"} <= set(study.models)
    assert "base@1" not in study.models and "stage1@1" not in study.models
    victr, rep = study.model_config("victr"), study.model_config("victr@2")
    assert rep["seed"] == replicate_seed(victr["seed"], 2) != victr["seed"]
    assert _no_seeds(rep) == _no_seeds(victr)  # only the seeds differ
    assert study.model_config("reflow@1")["reflow"]["seed"] == replicate_seed(study.model_config("reflow")["reflow"]["seed"], 1)
    assert study.model_config("dit@1")["seed"] == replicate_seed(study.model_config("dit")["seed"], 1)
    sampling = study.model_sampling("victr@1")
    assert sampling["seed"] == replicate_seed(study.sampling["seed"], 1)
    assert sampling["condition_sets"] == study.sampling["condition_sets"]  # the conditions stay the same
    assert study.model_inputs("victr@1") == {"model": f"{study.results}/stage2/victr@1/final",
                                             "init": f"{study.results}/stage1/final"}
    assert study.model_inputs("dit@2") == {"model": f"{study.results}/architectures/dit@2/final"}
    assert study.model_generator("dit_no_conv@1") == study.model_generator("dit_no_conv")
    assert study.replicate_paths(study.metrics_json("victr", "euler-4")) == [
        study.metrics_json(m, "euler-4") for m in ("victr", "victr@1", "victr@2")]
    assert study.replicate_paths(study.downstream_json("real_synth-victr"))[2] == study.downstream_json(
        "real_synth-victr@2")
    assert study.replicate_paths(study.metrics_json("base")) == [study.metrics_json("base")]
    assert study.replicate_paths(study.downstream_json("real")) == [study.downstream_json("real")]
    inputs = table_input_files("victr_table2", study)
    assert inputs["victr@2"] == study.metrics_json("victr@2") and inputs["vanilla@1"] == study.metrics_json("vanilla@1")
    one = _study()
    assert table_input_files("victr_table2", one) == {"vanilla": one.metrics_json("vanilla"),
                                                      "victr": one.metrics_json("victr")}
    with pytest.raises(ValueError, match="'@'"):
        _study(variants={**one.config["variants"], "bad@1": {}})


def test_a_table_pools_the_replicates_it_is_given(tmp_path):
    study = _study(replicates=2)
    files = {}
    for key, fd in (("vanilla", 2.0), ("vanilla@1", 4.0), ("victr", 1.0), ("victr@1", 1.5)):
        path = tmp_path / f"{key}.json"
        path.write_text(pd.Series(_record(key, fd, [fd * 0.9, fd, fd * 1.1, fd])).to_json())
        files[key] = str(path)
    table = build_table("victr_table2", files, table_params("victr_table2", study))
    write_table(table, tmp_path / "t.csv", tmp_path / "t.md", "T")
    out = pd.read_csv(tmp_path / "t.csv")
    fd = [c for c in out.columns if c.startswith("FD (")][0]
    assert list(out[fd]) == pytest.approx([3.0, 1.25])
    assert list(out[f"{fd} seed sd"]) == pytest.approx([np.std([2, 4], ddof=1), np.std([1, 1.5], ddof=1)])
    md = (tmp_path / "t.md").read_text()
    assert "3 ± 1.414 [" in md and "mean over 2 training seeds" in md and "two-level bootstrap" in md


def test_dry_run_with_replicates_trains_and_samples_each_replicate(tmp_path):
    from workflow import embedded_config, run_snakemake

    proc = run_snakemake(tmp_path, embedded_config(replicates=2), "results/example/tables/victr_table2.csv",
                         extra=("-n",))
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["stage2"] == 4 and counts["sample"] == 4 and counts["metrics"] == 4  # 2 variants x 2 seeds
    assert counts["base"] == 1 and counts["stage1"] == 1 and counts["vae"] == 1  # shared by the replicates
