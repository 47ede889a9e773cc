"""Run the real Snakefile on a config in a temporary working folder (test helper)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _command(workdir: Path, config: dict, targets: tuple[str, ...], extra: tuple[str, ...], cores: int) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config_file), "--cores", str(cores), *extra, *targets]


def _checked(proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def run_snakemake(workdir: Path, config: dict, *targets: str, extra: tuple[str, ...] = (), check: bool = True,
                  timeout: int = 3600) -> subprocess.CompletedProcess:
    """Write ``config`` to ``workdir/config.yaml`` and run snakemake there with the repository's Snakefile."""
    proc = subprocess.run(_command(workdir, config, targets, extra, 2), capture_output=True, text=True, timeout=timeout)
    return _checked(proc, check)


def run_snakemake_side_by_side(workdirs: list[Path], config: dict, *targets: str,
                               timeout: int = 3600) -> list[subprocess.CompletedProcess]:
    """The same study in each of ``workdirs`` at once, one core each (two runs on two cores)."""
    procs = [subprocess.Popen(_command(w, config, targets, (), 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for w in workdirs]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return [_checked(proc, True) for proc in done]


def embedded_config(**overrides) -> dict:
    """The embedded default study's config with ``overrides`` applied at the top level."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(overrides)
    return config


def micro_generative_config() -> dict:
    """The embedded study with every training stage cut to a few steps (same rules, same data)."""
    config = embedded_config()
    config["vae"] = {**config["vae"], "steps": 12, "checkpoint_every": 0}
    for stage, steps in (("base", 12), ("stage1", 6), ("stage2", 6)):
        config[stage] = {**config[stage], "steps": steps, "checkpoint_every": 0}
    config["stage1"]["ewc"] = {**config["stage1"]["ewc"], "fisher_batches": 2}
    config["downstream"] = {**config["downstream"], "steps": 12, "checkpoint_every": 0}
    config["sampling"] = {**config["sampling"], "default_run": "euler-3"}
    return config
