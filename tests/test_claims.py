"""The claims table: published effects recomputed from the papers' tables and checked against their text,
paired / unpaired reproduced intervals, the verdict rule, and the real config/claims.yaml."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from medsynth.claims import (COLUMNS, ClaimsError, claims_table, load_claims, missing_rows, parse_claims,
                             published_effect, record_paths, record_refs, reproduced_effect, verdict)
from medsynth.claims.effects import effect, half_unit

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "config" / "claims.yaml"
PAPER_DIR = ROOT / "config" / "paper_reported"


def _claim(**over) -> dict:
    """A valid claim entry; ``over`` replaces top-level keys (``published`` / ``reproduced`` whole)."""
    base = {"id": "c1", "paper": "P", "claim": "a is lower than b", "where": "Table 1", "kind": "relative",
            "direction": "lower", "tolerance": 0.0, "tolerance_why": "direction only",
            "published": {"table": "t", "value": "FID", "a": {"method": "ours"}, "b": {"method": "base"}},
            "reproduced": {"metric": "fd_self", "a": {"model": "victr"}, "b": {"model": "vanilla"}}}
    return {**base, **over}


def _one(**over):
    return parse_claims({"settings": {"unpaired_seed": 3}, "claims": [_claim(**over)]}).claims[0]


@pytest.fixture
def paper_dir(tmp_path: Path) -> Path:
    (tmp_path / "t.csv").write_text("method,FID,seconds,steps\nours,10.0,6+15,4\nbase,12.5,198+15,40\n"
                                    "other,13.33,100,50\n")
    (tmp_path / "seg.csv").write_text("method,dice\nreal only,0.433\nours,0.511\n")
    return tmp_path


# ------------------------------------------------------------------------------------ published side
@pytest.mark.parametrize(("kind", "expected"), [("difference", -2.5), ("ratio", 0.8), ("relative", -0.2)])
def test_published_effect_is_recomputed_from_the_csv(paper_dir, kind, expected):
    got = published_effect(_one(kind=kind), paper_dir)
    assert got.value == pytest.approx(expected)
    assert got.check == "no number in text"
    assert "a = 10 [method=ours] vs b = 12.5 [method=base]" in got.rows


def test_a_stated_number_that_matches_is_consistent(paper_dir):
    pub = {"table": "t", "value": "FID", "a": {"method": "ours"}, "b": {"method": "base"},
           "text": {"value": -0.2, "a": 10.0, "b": 12.5, "says": "20 % lower (10 vs 12.5)"}}
    assert published_effect(_one(published=pub), paper_dir).check == "consistent"


def test_a_stated_number_that_does_not_match_is_inconsistent(paper_dir):
    pub = {"table": "t", "value": "FID", "a": {"method": "ours"}, "b": {"method": "base"},
           "text": {"value": -0.3, "says": "30 % lower"}}
    assert published_effect(_one(published=pub), paper_dir).check == \
        "inconsistent: text says value = -0.3, tables give -0.2"


def test_the_search_names_the_cells_a_mismatched_number_comes_from(paper_dir):
    # (10 - 13.33) / 13.33 = -0.2498: the text's -25 % is the 'other' row's, not the named baseline's
    pub = {"table": "t", "value": "FID", "a": {"method": "ours"}, "b": {"method": "base"},
           "text": {"value": -0.25, "says": "25 % lower"}, "search": {"vary_b": ["method"]}}
    check = published_effect(_one(published=pub), paper_dir).check
    assert check.startswith("inconsistent: text says value = -0.25, the named rows give -0.2")
    assert "matches method=other instead" in check


def test_a_number_that_matches_no_cell_is_not_derivable(paper_dir):
    pub = {"table": "t", "value": "FID", "a": {"method": "ours"}, "b": {"method": "base"},
           "text": {"value": -0.4, "says": "40 % lower"}, "search": {"vary_b": ["method"]}}
    check = published_effect(_one(published=pub), paper_dir).check
    assert check.startswith("not derivable: text says value = -0.4")
    assert "matches no cell (searched method; closest: method=other gives -0.2498)" in check


def test_an_unnamed_baseline_is_not_derivable(paper_dir):
    pub = {"table": "t", "value": "FID", "a": {"method": "ours"}, "baseline": "existing approaches",
           "text": {"value": -0.2, "says": "20 % lower than existing approaches"}, "search": {"vary_b": ["method"]}}
    got = published_effect(_one(published=pub), paper_dir)
    assert got.value is None
    assert got.check.startswith("not derivable: baseline never named (existing approaches)")
    assert "matches method=base" in got.check


def test_rounded_cells_explain_a_last_digit_difference(paper_dir):
    # 0.511 - 0.433 = 0.078, the text's +7.9 % is within the cells' rounding (each +-0.0005)
    pub = {"table": "seg", "value": "dice", "a": {"method": "ours"}, "b": {"method": "real only"},
           "text": {"value": 0.079, "says": "0.511 (+7.9%)"}}
    assert published_effect(_one(kind="difference", published=pub), paper_dir).check == "consistent"
    assert half_unit(0.079) == pytest.approx(0.0005) and half_unit(33) == 0.5


def test_sums_are_read_by_their_first_term_and_exact_counts_are_not_rounded(paper_dir):
    seconds = {"table": "t", "value": "seconds", "a": {"method": "base"}, "b": {"method": "ours"},
               "cell": "first_term", "text": {"value": 33, "says": "33x faster"}}
    got = published_effect(_one(kind="ratio", direction="higher", published=seconds), paper_dir)
    assert got.value == pytest.approx(33.0) and got.check == "consistent"
    as_text = {**seconds, "cell": "number"}
    assert "is not a number" in published_effect(_one(kind="ratio", published=as_text), paper_dir).check
    # 4 / 40 = 0.1; with rounding 0.08 (4 / 50) could pass, as exact counts it cannot
    steps = {"table": "t", "value": "steps", "a": {"method": "ours"}, "b": {"method": "base"}, "exact": True,
             "text": {"value": 0.08, "says": "from 50 steps to 4"}}
    assert published_effect(_one(kind="ratio", published=steps), paper_dir).check == \
        "inconsistent: text says value = 0.08, tables give 0.1"


# ----------------------------------------------------------------------------------- reproduced side
def _record(values: dict, replicates: dict, digest: str = "d1", seed: int = 7) -> dict:
    return {"estimates": {m: {"value": v, "low": None, "high": None} for m, v in values.items()},
            "bootstrap": {"resamples": len(next(iter(replicates.values()))), "level": 0.95, "seed": seed,
                          "unit": "patients", "n_units": 5, "units_digest": digest, "replicates": replicates}}


def test_paired_replicates_exclude_zero_where_unpaired_ones_span_it():
    noise = np.random.default_rng(0).normal(0.0, 1.0, 400)  # the resample's luck, shared by a and b
    a = _record({"fd_self": 10.0}, {"fd_self": list(10.0 + noise)})
    b_same = _record({"fd_self": 10.5}, {"fd_self": list(10.5 + noise)})
    b_other = _record({"fd_self": 10.5}, {"fd_self": list(10.5 + noise)}, digest="d2")
    claim = _one(kind="difference")
    paired = reproduced_effect(claim, {"metrics/victr": a, "metrics/vanilla": b_same}, 3)
    assert paired.paired is True and paired.value == pytest.approx(-0.5)
    assert paired.low == pytest.approx(-0.5) and paired.high == pytest.approx(-0.5)
    assert verdict("lower", 0.0, "difference", paired.low, paired.high)[0] == "reproduced"
    unpaired = reproduced_effect(claim, {"metrics/victr": a, "metrics/vanilla": b_other}, 3)
    assert unpaired.paired is False and "unpaired" in unpaired.note
    assert unpaired.low < 0.0 < unpaired.high
    assert verdict("lower", 0.0, "difference", unpaired.low, unpaired.high)[0] == "not resolvable"


@pytest.mark.parametrize(("direction", "tol", "kind", "low", "high", "expected"), [
    ("lower", 0.0, "difference", -0.3, -0.1, "reproduced"),
    ("lower", 0.2, "difference", -0.3, -0.1, "not resolvable"),  # not beyond the margin
    ("lower", 0.0, "difference", 0.1, 0.3, "contradicted"),
    ("lower", 0.0, "difference", -0.1, 0.1, "not resolvable"),
    ("higher", 0.0, "relative", 0.1, 0.3, "reproduced"),
    ("higher", 0.0, "relative", -0.3, -0.1, "contradicted"),
    ("higher", 0.0, "relative", -0.1, 0.1, "not resolvable"),
    ("higher", 0.0, "ratio", 1.1, 1.4, "reproduced"),  # a ratio's no-effect is 1
    ("higher", 0.0, "ratio", 0.5, 0.9, "contradicted"),
    ("equivalent", 0.1, "relative", -0.05, 0.08, "reproduced"),
    ("equivalent", 0.1, "relative", 0.12, 0.3, "contradicted"),
    ("equivalent", 0.1, "relative", -0.3, -0.15, "contradicted"),
    ("equivalent", 0.1, "relative", 0.05, 0.2, "not resolvable"),
    ("equivalent", 0.1, "ratio", 0.95, 1.05, "reproduced"),
    ("at_most", 0.1, "relative", -0.4, -0.1, "reproduced"),  # better than the baseline: non-inferior
    ("at_most", 0.1, "relative", -0.05, 0.1, "reproduced"),
    ("at_most", 0.1, "relative", 0.05, 0.2, "not resolvable"),
    ("at_most", 0.1, "relative", 0.12, 0.3, "contradicted"),
    ("at_least", 0.05, "difference", -0.04, 0.2, "reproduced"),
    ("at_least", 0.05, "difference", -0.1, 0.0, "not resolvable"),
    ("at_least", 0.05, "difference", -0.2, -0.06, "contradicted"),
])
def test_each_verdict_branch(direction, tol, kind, low, high, expected):
    assert verdict(direction, tol, kind, low, high)[0] == expected


def test_a_missing_metric_is_unavailable_and_not_resolvable():
    a = _record({"fd_self": 1.0}, {"fd_self": [1.0, 1.1]})
    a["estimates"]["fid"] = {"value": None, "low": None, "high": None}
    a["fid"] = {"value": None, "status": "unavailable: no Inception weights"}
    b = _record({"fd_self": 1.2}, {"fd_self": [1.2, 1.3]})
    claims = parse_claims({"settings": {"unpaired_seed": 3}, "claims": [
        _claim(id="fid", reproduced={"metric": "fid", "a": {"model": "victr"}, "b": {"model": "vanilla"}}),
        _claim(id="kid", reproduced={"metric": "kid", "a": {"model": "victr"}, "b": {"model": "vanilla"}}),
        _claim(id="gone", reproduced={"metric": "fd_self", "a": {"model": "victr"}, "b": {"model": "ddpm"}}),
        _claim(id="absent", reproduced={"absent": "no such model in the study"})]})
    table = claims_table(claims, {"metrics/victr": a, "metrics/vanilla": b}, PAPER_DIR).set_index("id")
    assert table.loc["fid", "reproduced effect"] == \
        "unavailable: fid of metrics/victr is null: unavailable: no Inception weights"
    assert table.loc["fid", "verdict"] == "not resolvable"
    assert table.loc["fid", "reason"].startswith("fid of metrics/victr is null")
    assert table.loc["kid", "reproduced effect"] == "unavailable: kid of metrics/victr is not estimated"
    assert table.loc["kid", "low"] == table.loc["kid", "high"] == ""
    assert table.loc["gone", "verdict"] == "not resolvable"
    assert table.loc["gone", "reason"] == "this study does not produce metrics/ddpm (ddpm (default run))"
    assert (table.loc["absent", "verdict"], table.loc["absent", "reason"]) == ("not resolvable",
                                                                              "no such model in the study")


def test_a_point_only_metric_has_an_effect_but_no_interval():
    a = _record({"seconds_per_sample": 0.1, "fd_self": 1.0}, {"fd_self": [1.0, 1.1]})
    b = _record({"seconds_per_sample": 0.4, "fd_self": 1.0}, {"fd_self": [1.0, 1.1]})
    claim = _one(kind="ratio", reproduced={"metric": "seconds_per_sample", "a": {"model": "victr"},
                                           "b": {"model": "vanilla"}})
    got = reproduced_effect(claim, {"metrics/victr": a, "metrics/vanilla": b}, 3)
    assert got.value == pytest.approx(0.25) and got.low is None
    assert "no bootstrap replicates" in got.no_interval


def test_effects_work_on_replicates_and_a_zero_baseline_is_nan():
    assert list(effect("difference", np.array([1.0, 2.0]), np.array([0.5, 0.5]))) == [0.5, 1.5]
    assert math.isnan(effect("ratio", 1.0, 0.0)) and math.isnan(effect("relative", 1.0, 0.0))


def test_record_paths_name_every_record_once():
    claims = parse_claims({"settings": {"unpaired_seed": 3}, "claims": [
        _claim(id="x", reproduced={"metric": "fd_self", "a": {"model": "victr", "run": "tweedie-4"},
                                   "b": {"model": "victr"}}),
        _claim(id="y", reproduced={"metric": "mdsc", "a": {"setting": "real_synth-victr"}, "b": {"setting": "real"}}),
        _claim(id="z", reproduced={"metric": "fd_self", "a": {"model": "victr"}, "b": {"model": "vanilla"}})]})
    paths = record_paths(claims, lambda model, run: f"m/{model}/{run or 'default'}.json",
                         lambda setting: f"d/{setting}/evaluation.json")
    assert paths == {"metrics/victr/tweedie-4": "m/victr/tweedie-4.json", "metrics/victr": "m/victr/default.json",
                     "downstream/real_synth-victr": "d/real_synth-victr/evaluation.json",
                     "downstream/real": "d/real/evaluation.json", "metrics/vanilla": "m/vanilla/default.json"}


# ------------------------------------------------------------------------------------- claims file
@pytest.mark.parametrize(("over", "words"), [
    ({"direction": "down"}, ["claim 'c1'", "direction: must be one of lower, higher, equivalent, at_most, at_least"]),
    ({"tolerance": "small"}, ["claim 'c1'", "tolerance: must be a number"]),
    ({"direction": "equivalent", "tolerance": 0.0}, ["claim 'c1'", "tolerance: must be >= 0, and > 0"]),
    ({"published": {"table": "t", "value": "FID", "a": {"method": "ours"}}}, ["claim 'c1'", "published.b:"]),
    ({"published": {"table": "t", "value": "FID", "a": {"m": "x"}, "b": {"m": "y"}, "colour": 1}},
     ["claim 'c1'", "published.colour: unknown key"]),
    ({"reproduced": {"metric": "fd_self", "a": {"model": "victr", "setting": "real"}, "b": {"model": "v"}}},
     ["claim 'c1'", "reproduced.a: give either model"]),
    ({"published": {"table": "t", "value": "FID", "a": {"m": "x"}, "b": {"m": "y"}, "text": {"says": "x"}}},
     ["claim 'c1'", "published.text: states no number"]),
])
def test_a_bad_claim_names_its_id_and_key(over, words):
    with pytest.raises(ClaimsError) as err:
        _one(**over)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_claim_without_id_is_named_by_position_and_a_bad_file_by_its_path(tmp_path):
    entry = {k: v for k, v in _claim().items() if k != "id"}
    with pytest.raises(ClaimsError, match=r"claim #1: id: required key is missing"):
        parse_claims({"settings": {"unpaired_seed": 3}, "claims": [entry]})
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"settings": {"unpaired_seed": 3}, "claims": [_claim(), _claim()]}))
    with pytest.raises(ClaimsError, match=r"claims\.yaml: claim 'c1': id: used by more than one claim"):
        load_claims(path)


def test_the_real_claims_file_loads_and_its_paper_rows_exist():
    claims = load_claims(CLAIMS)
    ids = {c.id for c in claims}
    for wanted in ("victr_few_step_quality", "victr_below_vanilla_fid", "victr_ewc_pretraining",
                   "victr_real_synth_beats_real", "maisi_rf30_matches_ddpm1000", "maisi_speedup_33x",
                   "maisi_contrastive_roi", "medsyn2_gated_attention", "medsyn2_depthwise_conv"):
        assert wanted in ids
    assert {c.paper for c in claims} == {"ViCTr", "MedSyn2", "MAISI-v2", "MedDiff-FT"}
    for c in claims:
        assert missing_rows(c.published, PAPER_DIR) == [], c.id


def test_the_real_claims_name_models_runs_and_settings_of_the_study():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    models = set(config["variants"]) | set(config.get("architectures") or {})
    runs = {config["sampling"]["default_run"], *config["sampling"]["steps_runs"],
            *(r["run"] for r in config["tables"]["maisi_main"]),
            *(r["run"] for r in config["tables"]["victr_t4"] if "run" in r)}
    maisi = yaml.safe_load((ROOT / "config" / "studies" / "maisi_v2.yaml").read_text())
    for ref in record_refs(load_claims(CLAIMS)):
        if ref.task is not None:  # a tumour task of MAISI-v2's study (the embedded study has none)
            assert ref.task in maisi["volumes"]["downstream"]["tasks"] and ref.setting in ("real", "real_synth"), ref
        elif ref.setting is not None:
            assert ref.setting in config["downstream"]["settings"], ref
        elif ref.reference is not None:  # the MedSyn2 study's reference segmenter (the embedded study has none)
            medsyn2 = yaml.safe_load((ROOT / "config" / "studies" / "medsyn2.yaml").read_text())
            assert ref.reference in medsyn2["downstream"]["tasks"]["semiseg"]["references"], ref
        else:
            assert ref.model in models and (ref.run is None or ref.run in runs), ref


def test_the_real_claims_table_from_paired_records():
    claims = load_claims(CLAIMS)
    rng = np.random.default_rng(1)
    records = {}
    for i, ref in enumerate(record_refs(claims)):
        metrics = ("dice",) if ref.task else ("mdsc", "mhd95") if ref.setting or ref.reference else (
            "fd_self", "fid", "dice", "dice/liver")
        values = {m: 1.0 + 0.1 * i for m in metrics}
        reps = {m: list(v + rng.normal(0.0, 0.01, 50)) for m, v in values.items()}
        records[ref.key] = _record({**values, "seconds_per_sample": 0.1 + i}, reps)
    table = claims_table(claims, records, PAPER_DIR)
    assert list(table.columns) == COLUMNS and len(table) == len(claims)
    rows = table.set_index("id")
    assert rows.loc["victr_ewc_pretraining", "published check"] == "consistent"
    assert rows.loc["victr_nnunet_plus_3_8", "published check"].startswith("not derivable: text says value = 3.8")
    assert rows.loc["medsyn2_fid_24_percent", "verdict"] == "not resolvable"
    assert rows.loc["medsyn2_fid_24_percent", "reason"].startswith("the study has no Text2CT")
    assert rows.loc["maisi_speedup_33x", "published effect"] == pytest.approx(33.0)
    assert rows.loc["maisi_speedup_33x", "verdict"] == "not resolvable"
    assert rows.loc["maisi_speedup_33x", "reason"].startswith("seconds_per_sample")
    assert rows.loc["maisi_contrastive_roi", "paired"] == "paired"
    assert set(rows["paired"]) <= {"paired", ""}
    assert all(v.split(":")[0] in ("reproduced", "contradicted", "not resolvable") for v in rows["verdict"])


def test_a_claim_names_a_model_by_its_role_in_the_study():
    """``${medsyn2_model}`` in a claim's model / setting is the study's tables.medsyn2_model; an unknown
    role is an error naming it; the published side is left alone."""
    from medsynth.claims import ClaimsError, study_roles
    from medsynth.claims.spec import fill_roles

    raw = {"published": {"a": {"model": "MedSyn2"}}, "reproduced": {"a": {"setting": "real_synth-${medsyn2_model}"},
                                                                     "b": {"model": "${medsyn2_model}"}}}
    filled = fill_roles(raw, study_roles({"medsyn2_model": "medsyn2", "meddiff_model": "victr",
                                          "medsyn2_table5_task": None}))
    assert filled["reproduced"] == {"a": {"setting": "real_synth-medsyn2"}, "b": {"model": "medsyn2"}}
    assert filled["published"] == raw["published"]
    with pytest.raises(ClaimsError, match="names no role"):
        fill_roles({"a": {"model": "${nobody}"}}, {"medsyn2_model": "x"})
    claims = load_claims(CLAIMS)  # roles from the schema's defaults: victr
    combined = next(c for c in claims.claims if c.id == "medsyn2_combined_beats_real")
    assert combined.reproduced.a.setting == "real_synth-victr"
    assert combined.reproduced.b.setting == "real"
    roles = study_roles({"medsyn2_model": "m", "meddiff_model": "meddiff_ft", "medsyn2_table5_task": "semiseg"})
    meddiff = next(c for c in load_claims(CLAIMS, roles).claims if c.id == "meddiff_dice_plus_1")
    assert meddiff.reproduced.a.setting == "real_synth_mgf-meddiff_ft"  # the MedDiff-FT study's own model
    semiseg = next(c for c in load_claims(CLAIMS, roles).claims if c.id == "medsyn2_combined_beats_real")
    assert (semiseg.reproduced.a.setting, semiseg.reproduced.b.setting) == ("semiseg.real_synth-m", "semiseg.real")


def test_a_tumour_task_record_has_its_own_key_and_path_and_only_real_or_real_synth():
    claim = _one(reproduced={"metric": "dice", "a": {"task": "liver_tumor", "setting": "real_synth"},
                             "b": {"task": "liver_tumor", "setting": "real"}})
    a, b = claim.reproduced.a, claim.reproduced.b
    assert (a.key, b.key) == ("volumes/downstream/liver_tumor/real_synth", "volumes/downstream/liver_tumor/real")
    assert a.describe() == "tumour task liver_tumor real_synth"
    paths = record_paths([claim], lambda m, r: "", lambda s: f"downstream/{s}", lambda t, s: f"v/{t}/{s}.json")
    assert paths == {a.key: "v/liver_tumor/real_synth.json", b.key: "v/liver_tumor/real.json"}
    assert set(record_paths([claim], lambda m, r: "", lambda s: "").values()) == {""}  # no tumour path: absent
    with pytest.raises(ClaimsError, match="real or real_synth"):
        _one(reproduced={"metric": "dice", "a": {"task": "liver_tumor", "setting": "real_aug"},
                         "b": {"task": "liver_tumor", "setting": "real"}})


def test_a_reference_segmenter_record_has_its_own_key_and_says_why_it_is_unavailable():
    claim = _one(reproduced={"metric": "mdsc", "a": {"setting": "semiseg.real_synth-m"},
                             "b": {"reference": "semiseg.medpseg"}})
    b = claim.reproduced.b
    assert (b.key, b.describe()) == ("downstream_reference/semiseg.medpseg", "reference segmenter semiseg.medpseg")
    paths = record_paths([claim], lambda m, r: "", lambda s: f"d/{s}.json", reference_path=lambda r: f"r/{r}.json")
    assert paths == {"downstream/semiseg.real_synth-m": "d/semiseg.real_synth-m.json", b.key: "r/semiseg.medpseg.json"}
    records = {"downstream/semiseg.real_synth-m": _record({"mdsc": 0.6}, {"mdsc": [0.6, 0.61]}),
               b.key: {"status": "unavailable: MEDPSeg weights are not configured"}}
    effect = reproduced_effect(claim, records, 0)
    assert effect.unavailable == "downstream_reference/semiseg.medpseg: unavailable: MEDPSeg weights are not configured"
    with pytest.raises(ClaimsError, match="by reference alone"):
        _one(reproduced={"metric": "mdsc", "a": {"setting": "real"}, "b": {"reference": "t.m", "setting": "real"}})
    from medsynth.claims import study_roles

    roles = study_roles({"medsyn2_model": "m", "meddiff_model": "v", "medsyn2_table5_task": "semiseg"})
    medpseg = next(c for c in load_claims(CLAIMS, roles).claims if c.id == "medsyn2_combined_beats_medpseg")
    assert medpseg.reproduced.b.reference == "semiseg.medpseg"
