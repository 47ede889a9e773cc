"""Shared steps of the pretrained-model tests: fetching a tiny release through the loopback Hub stand-in
with the weights task, and the generator stages + sampling run from a pretrained start."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest

from hfhub_server import FakeHub, RunningHub

TOKEN = "hf_tinytesttoken0123456789"


def fetch_from_stand_in(registry: dict, names: list[str], files: dict[str, bytes], root: Path) -> dict[str, Path]:
    """Serve ``files`` as the registry repo of ``names`` (one repo) and fetch each entry with the weights task
    (only ``endpoint`` overridden); a gated entry must be refused without ``HF_TOKEN`` before any request,
    then is fetched with it. Returns each entry's local files folder."""
    from huggingface_hub import close_session, constants

    from medsynth.data.download import DownloadError
    from medsynth.tasks.weights import weights as weights_task
    from medsynth.weights import model_entry, model_files

    first = registry[names[0]]
    gated = first["access"] == "gated" and first.get("auth", {}).get("required", True)
    hub = FakeHub(repo_id=first["repo_id"], repo_type="model", gated=gated, granted_tokens={TOKEN})
    for path, data in files.items():
        hub.add_file(path, data, lfs=path.endswith((".safetensors", ".bin", ".pt")))
    mp = pytest.MonkeyPatch()
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        mp.delenv(var, raising=False)
    for name, value in {"HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "HF_HUB_CACHE": str(root / "hf_cache"),
                        "HF_TOKEN_PATH": str(root / "no_token")}.items():
        mp.setattr(constants, name, value)
    local = {}
    try:
        with RunningHub(hub):
            for name in names:
                entry = model_entry(registry, name, {"endpoint": hub.endpoint})
                job = SimpleNamespace(params=SimpleNamespace(entry=entry, download={"retries": 1, "progress": False}),
                                      output=SimpleNamespace(inventory=str(root / name / "inventory.csv"),
                                                             source=str(root / name / "source.json")))
                if gated:
                    with pytest.raises(DownloadError, match="HF_TOKEN"):
                        weights_task(job)
                    assert hub.requests == []
                    mp.setenv("HF_TOKEN", TOKEN)
                weights_task(job)
                local[name] = model_files(name, root, entry)
    finally:
        mp.undo()
        close_session()
    return local


def stages_and_sampling(shards, vae: Path, stats: Path, gen: dict, base: dict, stage1: dict, stage2: dict,
                        folder: Path, sampling: dict) -> list[Path]:
    """Base, stage 1 (EWC), a stage-2 LoRA (variant victr) and one euler-2 sampling call on the test split;
    checks the adapter holds LoRA weights only; returns the generated set's files."""
    from safetensors.torch import load_file

    from medsynth.generator import run_base, run_stage1, run_stage2, variant_config
    from medsynth.generator.sampling import sample_condition_set

    run_base(shards, vae, stats, folder / "base", gen, base)
    run_stage1(shards, vae, stats, folder / "base" / "final", folder / "stage1", gen, stage1, base)
    cfg = variant_config(stage2, {"victr": {}}, "victr")
    run_stage2(shards, vae, stats, folder / "stage1" / "final", folder / "stage1" / "ewc.safetensors",
               folder / "stage2", gen, copy.deepcopy(cfg))
    adapter = load_file(str(next((folder / "stage2" / "final").rglob("adapter_model.safetensors"))))
    assert adapter and all("lora" in k for k in adapter)
    out = [folder / f"s.{ext}" for ext in ("safetensors", "csv", "json")]
    sample_condition_set(shards, vae, stats, folder / "stage2" / "final", folder / "stage1" / "final", *out, gen,
                         cfg, sampling, "euler-2", {"split": ["test"]})
    return out
