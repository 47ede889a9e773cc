"""The study object (what the workflow derives from config), the table registry and the name lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from medsynth.names import DOWNSTREAM_KINDS, SAMPLERS, run_pattern
from medsynth.study import Study
from medsynth.tables import TABLES, build_table, table_names, table_params

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def _study(**overrides) -> Study:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(overrides)
    validate(config, str(REPO / "config" / "schema.yaml"))
    return Study(config, REPO)


def test_schema_run_pattern_is_the_sampler_list():
    pattern = SCHEMA["properties"]["sampling"]["properties"]["default_run"]["pattern"]
    schema_samplers = re.match(r"\^\(([a-z0-9|]+)\)", pattern).group(1).split("|")
    assert sorted(schema_samplers) == sorted(SAMPLERS)
    for run in ("euler-30", "ddim-5", "dopri5-auto", "dopri5-50"):
        assert re.fullmatch(run_pattern(), run) and re.fullmatch(pattern, run)
    for run in ("dopri5-x", "euler-auto", "rk4-10"):
        assert not re.fullmatch(run_pattern(), run) and not re.fullmatch(pattern, run)


def test_schema_setting_pattern_is_the_downstream_kind_list():
    items = SCHEMA["properties"]["downstream"]["properties"]["settings"]["items"]["pattern"]
    kinds = set(re.findall(r"[a-z_]+", items.split("-")[0]))
    assert kinds == set(DOWNSTREAM_KINDS)


def test_default_study_models_inputs_and_wildcards():
    s = _study()
    assert s.models[:2] == ["base", "stage1"] and "victr" in s.models
    assert s.model_inputs("victr") == {"model": f"{s.results}/stage2/victr/final", "init": f"{s.results}/stage1/final"}
    assert s.model_inputs("base") == {"model": f"{s.results}/base/final"}
    constraints = s.wildcard_constraints(["example"])
    assert re.fullmatch(constraints["setting"], "real_synth_mgf-victr")
    assert not re.fullmatch(constraints["setting"], "real_synth-nosuchmodel")
    assert s.downstream_inputs("real") == {}
    assert set(s.downstream_inputs("real_synth_mgf-victr")) == {"synthetic", "extractor"}


def test_architecture_clash_and_bad_extends_are_clear_errors():
    with pytest.raises(ValueError, match="clash"):
        _study(architectures={"victr": {"type": "medsyn2_dit"}})
    s = _study(architectures={"a": {"extends": "nope"}})
    with pytest.raises(ValueError, match="not an architecture"):
        s.architecture_backbone("a")


def test_every_registered_table_has_inputs_under_the_results_and_params():
    s = _study()
    names = table_names(s)
    assert set(names) <= set(TABLES) and "victr_table2" in names
    for name in names:
        inputs = TABLES[name].inputs(s)
        assert inputs, name
        # results files; the claims table also reads the claims themselves (config tables.claims)
        assert all(str(p).startswith(s.results) or k == "claims" for k, p in inputs.items()), name
        assert Path(table_params(name, s)["paper_dir"]).is_dir()
    assert "medsyn2_ablation" not in table_names(_study(architectures={}))


def test_a_study_builds_its_own_papers_tables_and_any_other_on_request():
    from medsynth.tables.registry import built_tables

    assert built_tables(_study()) == table_names(_study())  # the embedded study: all
    maisi = _study(tables={"build": ["maisi", "victr_table2"]})
    assert built_tables(maisi) == ["claims", "calibration", "victr_table2", "maisi_steps", "maisi_main",
                                   "maisi_contrastive", "maisi_hu_qc"]  # the headline tables come with any paper
    assert built_tables(_study(tables={"build": ["victr_table2"]})) == ["victr_table2"]  # a table alone
    assert table_names(maisi) == table_names(_study())  # the others stay buildable by name
    with pytest.raises(ValueError, match="unknown"):
        built_tables(_study(tables={"build": ["maisi_v2"]}))
    with pytest.raises(ValueError, match="cannot build"):
        built_tables(_study(architectures={}, tables={"build": ["medsyn2_ablation"]}))
    for paper, stem in (("victr", "victr"), ("medsyn2", "medsyn2"), ("maisi_v2", "maisi"), ("meddiff_ft", "meddiff")):
        study = yaml.safe_load((REPO / "config" / "studies" / f"{paper}.yaml").read_text())
        assert study["tables"]["build"] == [stem], paper


def test_unknown_table_is_a_key_error_naming_the_known_ones():
    with pytest.raises(KeyError, match="victr_table2"):
        build_table("no_such_table", {}, {})


def test_a_variant_with_options_that_exclude_each_other_fails_when_the_config_is_parsed():
    with pytest.raises(ValueError, match=r"variant 'bad'.*stage2\.reflow and stage2\.dmd"):
        _study(variants={"bad": {"reflow": {"enabled": True}, "dmd": {"enabled": True}}})


def test_stage2_conflicts_names_every_conflict_and_passes_the_shipped_variants():
    from medsynth.variants import stage2_conflicts

    found = stage2_conflicts({"objective": "ddpm", "reflow": {"enabled": True}, "adversarial": {"enabled": True},
                              "consistency": {"temporal_weight": 0.1}, "contrastive": {"enabled": True},
                              "method": "half"})
    assert len(found) == 5 and all("stage2." in f for f in found)
    assert any("stage2.contrastive" in f for f in found)
    s = _study()
    assert all(not stage2_conflicts(s.stage2_config(v)) for v in s.variants)


def test_a_variant_with_a_target_trains_and_is_measured_on_the_targets_slices():
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    targets = {"btcv": {"label": "BTCV", "select": {"dataset": ["btcv"]}},
               "amos": {"label": "AMOS", "select": {"dataset": ["amos22"], "modality": ["MR"]}}}
    variants = {**base["variants"], "victr": {"target": "btcv"},
                "victr_amos": {"target": "amos", "select": {"split": ["train"], "modality": ["CT", "MR"]}}}
    study = _study(targets=targets, variants=variants, default_variants=["victr", "victr_amos"], replicates=2)
    # stage 2 of a target: its select (split train, modality CT) AND the target's slices
    assert study.stage2_config("victr")["select"] == {"split": ["train"], "modality": ["CT"], "dataset": ["btcv"]}
    assert study.stage2_config("victr_amos@1")["select"] == {"split": ["train"], "modality": ["MR"],
                                                             "dataset": ["amos22"]}
    assert study.model_target("victr_amos@1") == "amos" and study.model_target("stage1") is None
    assert study.model_target("vanilla") is None
    # its condition sets too (samples, metrics, synthetic downstream data); the set's options are kept
    assert study.condition_select("victr", "eval") == {"split": ["test"], "dataset": ["btcv"]}
    assert study.condition_select("vanilla", "eval") == dict(study.sampling["condition_sets"]["eval"])
    assert study.condition_select("victr", "train_inpaint")["inpaint"]["channels"] == ["liver"]
    # a target whose slices the variant's select excludes is an error when the config is parsed
    with pytest.raises(ValueError, match="modality \\['CT'\\] and the target's \\['MR'\\]"):
        _study(targets=targets, variants={**variants, "victr_amos": {"target": "amos"}})


def test_a_target_stage2_select_and_grid_use_one_target():
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    targets = {"btcv": {"select": {"dataset": ["btcv"]}}, "amos": {"select": {"dataset": ["amos22"]}}}
    stage2 = {**base["stage2"], "select": {"split": ["train"]}}
    variants = {**base["variants"], "victr": {"target": "btcv"}, "vanilla": {**base["variants"]["vanilla"],
                                                                            "target": "btcv"},
                "victr_amos": {"target": "amos"}}
    study = _study(targets=targets, variants=variants, stage2=stage2,
                   default_variants=["victr", "vanilla", "victr_amos"])
    assert study.stage2_config("victr_amos")["select"] == {"split": ["train"], "dataset": ["amos22"]}
    assert {m for m, _ in study.grid_runs()} == {"victr", "vanilla"}  # the grid shows BTCV's conditions
    assert study.grid_select() == {"split": ["test"], "dataset": ["btcv"]}
    with pytest.raises(ValueError, match="variants.bad.target = 'nowhere' is not in config `targets`"):
        _study(targets=targets, variants={**variants, "bad": {"target": "nowhere"}})


def test_a_frozen_vae_without_pretrained_weights_fails_when_the_config_is_parsed():
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    with pytest.raises(ValueError, match="vae.steps: 0 freezes the VAE"):
        _study(vae={**base["vae"], "steps": 0})
    with pytest.raises(ValueError, match="volumes.vae.steps: 0"):
        _study(volumes={**base["volumes"], "vae": {**base["volumes"]["vae"], "steps": 0}})


def test_the_model_volumes_is_the_3d_generator_in_tables_and_the_steps_sweep():
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    study = _study(sampling={**base["sampling"], "steps_model": "volumes"},
                   tables={**base["tables"], "maisi_main": [{"model": "volumes", "run": "euler-5"}]})
    assert study.metrics_json("volumes", "euler-5") == f"{study.results}/volumes/metrics/euler-5.json"
    assert study.metrics_json("volumes") == f"{study.results}/volumes/metrics/{base['volumes']['run']}.json"
    from medsynth.tables.registry import table_input_files

    assert set(table_input_files("maisi_steps", study).values()) == {
        f"{study.results}/volumes/metrics/{r}.json" for r in base["sampling"]["steps_runs"]}
    assert list(table_input_files("maisi_main", study).values()) == [f"{study.results}/volumes/metrics/euler-5.json"]
    assert all(m != "volumes" for m, _ in study.grid_runs())  # the sample grid shows 2D slices only
    with pytest.raises(ValueError, match="3D generator"):
        _study(variants={**base["variants"], "volumes": {}})


def test_tumour_tasks_run_only_with_their_data_and_sample_their_training_masks():
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    tasks = {"liver_tumor": {"roi": "liver", "select": {"dataset": ["msd_liver"]}},
             "here": {"roi": "liver", "select": {"dataset": ["example"], "split": ["train", "val"]}},
             "anywhere": {"roi": "liver"}}
    volumes = {**base.get("volumes", {}), "enabled": True, "downstream": {"tasks": tasks}}
    study = _study(volumes=volumes)
    assert study.tumour_tasks() == ["here", "anywhere"]  # msd_liver is not a dataset of the study
    assert study.volume_condition_set("downstream-here") == {"split": ["train"], "dataset": ["example"]}
    assert study.tumour_inputs("here", "real") == {}
    run = study.volumes["run"]
    assert study.tumour_inputs("here", "real_synth") == {
        "synthetic": f"{study.results}/volumes/samples/{run}/downstream-here.safetensors",
        "synthetic_index": f"{study.results}/volumes/samples/{run}/downstream-here.csv"}
    assert set(study.tumour_records()) == {"here/real", "here/real_synth", "anywhere/real", "anywhere/real_synth"}
    constraints = study.wildcard_constraints(["example"])
    assert re.fullmatch(constraints["conditions"], "downstream-here")
    assert re.fullmatch(constraints["task"], "anywhere") and not re.fullmatch(constraints["task"], "liver_tumor")
    from medsynth.tables.registry import table_input_files

    assert set(table_input_files("maisi_downstream", study)) == set(study.tumour_records())
    assert _study().tumour_tasks() == []  # a 2D study has none
