"""Each paper study, planned at its published size (a dry run on a generated case table, no data).

For every study of config/studies/: snakemake lays out the whole DAG; every table of the paper is a
default target; every rule that runs a network asks for a GPU; every pretrained network the paper uses
is a registry model that the weights rule fetches and a rule takes as input; no pretrained value is a
bare path.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medsynth.tables.registry import TABLES
from medsynth.weights.refs import is_pretrained_key
from paper_dag import REPO, plan, published_sources, study_config

#: study file -> (table-name prefix of its paper, registry models it must fetch)
PAPERS = {
    "victr": ("victr", {"sd15", "inception_v3_fid", "m3d_clip", "totalsegmentator"}),
    "medsyn2": ("medsyn2", {"cxr_bert", "radimagenet_resnet50", "lungmask_ltrclobes", "totalsegmentator", "ct_clip",
                         "medpseg"}),
    "maisi_v2": ("maisi", {"maisi_vae", "maisi_diffusion_unet", "maisi_controlnet", "radimagenet_resnet50",
                           "totalsegmentator"}),
    "meddiff_ft": ("meddiff", {"sd15_inpainting"}),  # ISIC-2018
    **{f"meddiff_ft_{b}": ("meddiff", {"sd15_inpainting"}) for b in ("isic2017", "ph2", "busi", "ddti")},
}
#: MedDiff-FT's other benchmarks: a study each, merged onto config/studies/meddiff_ft.yaml (ISIC-2018)
BENCHMARK_STUDIES = {f"meddiff_ft_{b}": b for b in ("isic2017", "ph2", "busi", "ddti")}
#: rules that train or run a network: on a cluster each must ask for a GPU
NETWORK_RULES = {"vae", "base", "stage1", "stage2", "architecture", "sample", "metrics", "calibration", "downstream",
                 "volume_vae", "volume_generator", "volume_sample", "volume_metrics", "counterfactual_grid",
                 "progressive_grid"}


@pytest.fixture(scope="module", params=sorted(PAPERS))
def planned(request, tmp_path_factory):
    study = REPO / "config" / "studies" / f"{request.param}.yaml"
    return request.param, plan(study, tmp_path_factory.mktemp(request.param))


def test_the_case_table_has_the_published_size(planned):
    name, p = planned
    registry = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())
    expected = 0
    for ds in p.config["datasets"]:
        counts = registry[ds if isinstance(ds, str) else ds["name"]]["published_cases"]
        expected += counts if isinstance(counts, int) else sum(counts.values())
    assert len(published_sources(p.config, registry)) == expected
    shards = -(-expected // p.config["shard_size"])
    assert len(p.of("ingest")) == shards, name


def test_every_table_of_the_paper_is_a_default_target(planned):
    name, p = planned
    prefix = PAPERS[name][0]
    results = f"{p.config.get('results_dir', 'results')}/{p.config['study']}"
    tables = [t for t in TABLES if t.startswith(prefix) and not TABLES[t].on_request]  # on request: by path
    assert tables
    missing = [t for t in tables if f"{results}/tables/{t}.csv" not in p.targets()]
    assert not missing, f"{name}: tables not built by default: {missing}"
    assert f"{results}/report.html" in p.targets()
    # the paper's edit figures (ViCTr Fig. 3 / 8, MedSyn2 Fig. 5) with its report
    figure = {"victr": "counterfactual_grid", "medsyn2": "progressive_grid"}.get(name)
    if figure:
        assert p.of(figure), f"{name}: {figure} not planned"


def test_every_network_rule_asks_for_a_gpu(planned):
    name, p = planned
    gpu_rules = set(NETWORK_RULES)
    segmenters = p.config["masks"]["segmenters"].values()
    if any(str((s.get(s["backend"]) or {}).get("device", "")).startswith(("gpu", "cuda")) for s in segmenters):
        gpu_rules.add("masks")
    jobs = [j for j in p.jobs if j.rule in gpu_rules]
    assert {j.rule for j in jobs} >= {"vae", "sample", "metrics", "downstream"}, name
    cpu = sorted({j.rule for j in jobs if int(j.resources.get("gpu", 0)) < 1})
    assert not cpu, f"{name}: rules running a network without a GPU: {cpu}"


def test_every_pretrained_network_comes_from_the_registry(planned):
    name, p = planned
    models = yaml.safe_load((REPO / "config" / "models.yaml").read_text())
    bare = []

    def walk(node, where):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(key, str) and is_pretrained_key(key) and isinstance(value, str) and value:
                if value.partition("/")[0] not in models:
                    bare.append(f"{where}.{key} = {value}")
            else:
                walk(value, f"{where}.{key}")

    for section, value in p.config.items():  # sections' keys: the top-level weights_dir is the weights folder
        walk(value, f"{name}.{section}")
    assert not bare, f"pretrained values that are not registry models: {bare}"
    weights = p.config.get("weights_dir", "resources/weights")
    fetched = {j.wildcards.get("pretrained") for j in p.of("weights")}
    used = {f.split("/")[-2] for j in p.jobs if j.rule != "weights" for f in j.inputs
            if f.startswith(weights) and f.endswith("/inventory.csv")}
    expected = PAPERS[name][1]
    assert expected <= fetched, f"{name}: registry models never fetched: {sorted(expected - fetched)}"
    assert expected <= used, f"{name}: registry models no rule takes as input: {sorted(expected - used)}"


def test_every_downstream_task_setting_is_planned(planned):
    """Each setting of a downstream task is planned; MedSyn2's Table 5 task trains on SemiSeg's pictures,
    whose splits no generator selection takes."""
    name, p = planned
    cfg = p.config["downstream"]
    settings = {f"{t}.{s}" for t, task in cfg.get("tasks", {}).items() for s in task["settings"]}
    # (replicates of a model add <setting>@k)
    assert settings <= {job.wildcards["setting"].split("@")[0] for job in p.of("downstream")}, name
    if name == "medsyn2":
        assert settings == {"semiseg.real", "semiseg.real_synth-medsyn2", "semiseg.synth_only-medsyn2"}
        semiseg = cfg["tasks"]["semiseg"]
        assert semiseg["channels"] == ["ggo"] and semiseg["synthetic_count"] == 416
        assert semiseg["train_select"] == {"split": ["downstream_train"]}
        assert p.config["tables"]["medsyn2_table5_task"] == "semiseg"
        layout = next(d for d in p.config["datasets"] if isinstance(d, dict) and d["name"] == "semiseg")["layout"]
        assert set(layout["split_map"].values()) == {"downstream_train", "downstream_test"}
        assert all(p.config[stage]["select"] == {"split": ["train"]} for stage in ("base", "stage1", "stage2"))


def test_study_configs_stand_alone():
    """A paper study extends nothing: no tiny embedded setting leaks into it."""
    for name in set(PAPERS) - set(BENCHMARK_STUDIES):
        own = yaml.safe_load((REPO / "config" / "studies" / f"{name}.yaml").read_text())
        assert "extends" in own and own["extends"] is None, name
        assert study_config(REPO / "config" / "studies" / f"{name}.yaml") == own


@pytest.mark.parametrize("name", sorted(BENCHMARK_STUDIES))
def test_each_meddiff_benchmark_study_is_the_meddiff_recipe_on_its_dataset(name):
    from snakemake.utils import validate

    config = study_config(REPO / "config" / "studies" / f"{name}.yaml")
    validate(copy.deepcopy(config), str(REPO / "config" / "schema.yaml"))  # validate fills defaults in
    isic2018 = study_config(REPO / "config" / "studies" / "meddiff_ft.yaml")
    assert config["datasets"] == [BENCHMARK_STUDIES[name]] and config["study"] == name
    registry = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())
    modality = registry[BENCHMARK_STUDIES[name]]["layout"]["modality"]
    assert config["masks"]["by_modality"][modality] == "lesion_labels"  # the benchmark's masks are read
    differs = {k for k in set(config) | set(isic2018) if config.get(k) != isic2018.get(k)}
    # and BUSI draws the generated masks into its normal images (MedDiff-FT's lesion-free hosts)
    allowed = {"study", "extends", "datasets", "splits", "min_free_gib", "readers"} | ({"sampling"} if name.endswith(
        "busi") else set())
    assert differs <= allowed, differs
    hosts = config["sampling"]["condition_sets"]["train_stochastic"]["stochastic_masks"]["hosts"]
    assert hosts == ("lesion_free" if name.endswith("busi") else "own")


#: ViCTr Table 2's other backbones: a study each, merged onto config/studies/victr.yaml
BACKBONE_STUDIES = {"victr_sdxl": ("sdxl", {"sdxl"}), "victr_sd3": ("sd3", {"sd3"}),
                    "victr_pixart": ("pixart", {"pixart_alpha", "pixart_alpha_256"}), "victr_flux": ("flux", {"flux"})}


@pytest.mark.parametrize("name", sorted(BACKBONE_STUDIES))
def test_each_victr_backbone_study_is_the_victr_recipe_with_its_release(name):
    from snakemake.utils import validate

    from medsynth.study import Study
    from medsynth.weights.refs import resolve_pretrained
    from medsynth.weights.registry import load_models

    path = REPO / "config" / "studies" / f"{name}.yaml"
    config = study_config(path)
    validate(config, str(REPO / "config" / "schema.yaml"))
    victr = study_config(REPO / "config" / "studies" / "victr.yaml")
    validate(victr, str(REPO / "config" / "schema.yaml"))
    study = Study(config, REPO)
    backbone, models = BACKBONE_STUDIES[name]
    assert study.name == name and config["generator"]["backbone"]["type"] == backbone
    # the same recipe: stages, variants, targets and downstream are victr's
    for key in ("stage1", "stage2", "variants", "targets", "downstream", "datasets", "resources"):
        assert config[key] == victr[key], key
    used = resolve_pretrained(copy.deepcopy(config), load_models(REPO / "config" / "models.yaml"), "w", REPO)
    assert set(used["generator"]) == models and set(used["vae"]) <= models
    # Table 2's rows of this backbone sample vanilla with the paper's step count for it
    paper = {"sdxl": 30, "sd3": 50, "pixart": 25, "flux": 30}[backbone]
    assert {row["vanilla_run"] for row in config["tables"]["victr_t2"]} == {f"euler-{paper}"}
