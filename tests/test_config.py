"""The config schema documents every key, the configs validate, and the pins agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def _walk(schema: dict, path: str = ""):
    for key, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{key}".lstrip("."), sub
        if sub.get("type") == "object":
            yield from _walk(sub, f"{path}.{key}")


def test_every_key_has_a_description_and_a_default():
    missing = [k for k, sub in _walk(SCHEMA) if "description" not in sub or "default" not in sub]
    assert not missing, f"schema keys without description/default: {missing}"


@pytest.mark.parametrize("config_file", sorted((REPO / "config").glob("config.yaml")) + sorted((REPO / "config" / "studies").glob("*.yaml")))
def test_configs_validate(config_file):
    """Each config as snakemake sees it: merged onto the config it `extends` (default: the embedded one)."""
    from paper_dag import study_config

    config = study_config(config_file) if config_file.parent.name == "studies" else yaml.safe_load(
        config_file.read_text())
    validate(config, str(REPO / "config" / "schema.yaml"))


def test_a_study_extends_the_embedded_config_unless_it_says_null(tmp_path):
    from paper_dag import study_config

    own = tmp_path / "mine.yaml"
    own.write_text("study: mine\ndatasets: [example]\nbase: {steps: 7}\n")
    merged = study_config(own)
    assert merged["base"]["steps"] == 7 and merged["base"]["lr"] == yaml.safe_load(
        (REPO / "config" / "config.yaml").read_text())["base"]["lr"]
    own.write_text("study: mine\nextends: null\ndatasets: [example]\nbase: {steps: 7}\n")
    alone = study_config(own)
    validate(alone, str(REPO / "config" / "schema.yaml"))
    assert alone["base"]["lr"] == SCHEMA["properties"]["base"]["properties"]["lr"]["default"]


def test_defaults_fill_missing_keys():
    config = {"study": "s", "datasets": ["example"]}
    validate(config, str(REPO / "config" / "schema.yaml"))
    assert config["shard_size"] == 8 and config["ingest"]["qc"]["min_slices"] == 16


def test_a_completed_section_is_the_schemas_every_time_and_a_copy():
    from medsynth.settings import section

    first = section("ingest", {"qc": {"min_slices": 4}})
    assert first["qc"]["min_slices"] == 4 and first["qc"]["spacing_mm"] == [0.2, 8.0]
    first["qc"]["spacing_mm"].append(99)  # a caller changing its copy changes no later answer
    again = section("ingest", {"qc": {"min_slices": 4}})
    assert again == section("ingest", {"qc": {"min_slices": 4}}) and again["qc"]["spacing_mm"] == [0.2, 8.0]
    with pytest.raises(Exception):  # a bad value is refused however often a good one was completed
        section("ingest", {"qc": {"min_slices": "four"}})
    # values that only look alike are completed apart: an integer key is not its string
    maps = [section("masks", {"segmenters": {"s": {"backend": "dataset", "class_map": {k: "liver"}}}})
            for k in (1, "1")]
    assert [list(m["segmenters"]["s"]["class_map"]) for m in maps] == [[1], ["1"]]


def test_unknown_keys_are_rejected():
    with pytest.raises(Exception):
        validate({"study": "s", "datasets": ["example"], "shardsize": 3}, str(REPO / "config" / "schema.yaml"))


def test_pins_agree_between_pyproject_torch_and_lock():
    lock = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==")
            lock[re.sub(r"[-_.]+", "-", name).lower()] = version
    torch_pins = dict(l.split("==") for l in (REPO / "requirements" / "torch.txt").read_text().splitlines() if "==" in l)
    for name, version in torch_pins.items():
        assert lock[name] == version
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.split(r"[\[=<>~! ]", dep, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in lock, f"{name} is a dependency but not pinned in requirements/lock.txt"


def test_conda_envs_agree_with_the_lock():
    from medsynth.envs import FAMILIES, check

    assert check(REPO / "envs", REPO / "requirements" / "lock.txt") == []
    text = (REPO / "envs" / "masks.yaml").read_text()
    lock = (REPO / "requirements" / "lock.txt").read_text()
    torch_pin = re.search(r"^torch==(\S+)$", lock, re.M).group(1)
    assert f"- torch=={torch_pin}" in text and "- totalsegmentator==" in text
    for family in FAMILIES:
        assert (REPO / "envs" / f"{family}.yaml").exists()


def test_every_env_holds_what_its_rules_import():
    """The import graph of each rule's script (function-level imports included) is covered by its env."""
    from medsynth.envs import unmet_imports
    from medsynth.importgraph import rule_scripts

    rules = rule_scripts(REPO)
    assert {r.rule for r in rules} >= {"ingest", "register", "masks", "vae", "base", "stage2", "sample", "metrics",
                                        "downstream", "table"} and all(r.task_module for r in rules)
    assert unmet_imports(REPO, REPO / "requirements" / "lock.txt") == {}


def test_import_graph_follows_function_level_relative_and_lazy_imports(tmp_path):
    """A hand-made package: what a rule needs is what its task reaches, however it is imported."""
    from medsynth.importgraph import family_requirements, imported_modules, third_party

    pkg = tmp_path / "medsynth"
    (pkg / "tasks").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "tasks/__init__.py": "import json\n",
        "tasks/stage.py": "from . import helper\ndef run(job):\n    import yaml\n    from medsynth.lazy import thing\n",
        "tasks/helper.py": "try:\n    import torch\nexcept ImportError:\n    torch = None\n"
                           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pandas\n",
        "lazy/__init__.py": "_EXPORTS = {'thing': 'impl'}\n",
        "lazy/impl.py": "import numpy as np\n",
        "unused.py": "import scipy\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    modules = imported_modules(["medsynth.tasks.stage"], tmp_path)
    assert {"medsynth.tasks.helper", "medsynth.lazy.impl", "medsynth"} <= modules
    assert third_party(modules) == {"yaml", "numpy"}  # torch optional, pandas typing-only, scipy unreachable
    (tmp_path / "rules").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "rules" / "stage.smk").write_text(
        'rule stage:\n    conda:\n        "../envs/train.yaml"\n    script:\n        "../scripts/stage.py"\n')
    (tmp_path / "scripts" / "stage.py").write_text('from medsynth.tasks import run_rule\nrun_rule(snakemake, "stage:run")\n')
    needed = family_requirements(tmp_path)
    assert set(needed) == {"train"} and {"PyYAML", "numpy"} <= set(needed["train"])
    assert needed["train"]["numpy"] == {"stage"}


def test_named_profiles_work_as_users_type_them(tmp_path, monkeypatch):
    """`snakemake --profile slurm` (a name, not a path) finds this checkout's profile once installed."""
    from medsynth.profiles import PROFILES, install_profiles, user_profile_dir
    from workflow import embedded_config, run_snakemake

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert user_profile_dir() == tmp_path / "xdg" / "snakemake"
    first = install_profiles(REPO)
    assert all("->" in line for line in first) and install_profiles(REPO)[0].endswith("(already linked)")
    for name in PROFILES:
        assert (tmp_path / "xdg" / "snakemake" / name).resolve() == (REPO / "profiles" / name).resolve()
    # a profile of the user's own is kept, and said so
    own = tmp_path / "own"
    (own / "local").mkdir(parents=True)
    assert "kept" in install_profiles(REPO, own)[0] and not (own / "local").is_symlink()
    for name in PROFILES:  # resolved by name from the user config folder (the slurm one without conda here)
        proc = run_snakemake(tmp_path / f"work-{name}", embedded_config(), extra=(
            "--profile", name, "--sdm", "env-modules", "-n", "--quiet", "rules"))
        assert f"Using profile {name} " in proc.stdout + proc.stderr
