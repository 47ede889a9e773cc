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
    config = yaml.safe_load(config_file.read_text())
    validate(config, str(REPO / "config" / "schema.yaml"))


def test_defaults_fill_missing_keys():
    config = {"study": "s", "datasets": ["example"]}
    validate(config, str(REPO / "config" / "schema.yaml"))
    assert config["shard_size"] == 8 and config["ingest"]["qc"]["min_slices"] == 16


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
