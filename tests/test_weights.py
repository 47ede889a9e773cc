"""The model registry and the weights rule: fetch through the loopback Hub stand-in and a loopback HTTP server.

The entries are the real ones of config/models.yaml with only ``endpoint`` (or a URL) pointed at the
stand-in, so their include patterns and access rules are what is exercised. The socket guard
(``loopback_only``, via ``hf_env``) fails a test whose code tries to leave 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from hfhub_server import FakeHub, RunningHub  # noqa: E402
from httpserver import RunningServer  # noqa: E402
from workflow import REPO, embedded_config, run_snakemake  # noqa: E402

from medsynth.data.download import ChecksumMismatch, DownloadError, DownloadPolicy  # noqa: E402
from medsynth.tasks.weights import weights as weights_task  # noqa: E402
from medsynth.weights import ModelRegistryError, WeightsMissing, load_models, model_entry, model_files  # noqa: E402
from medsynth.weights.fetch import fetch_model  # noqa: E402
from medsynth.weights.local import inventory_path  # noqa: E402

POLICY = DownloadPolicy(retries=1, backoff_s=0.01, backoff_max_s=0.01, timeout_s=5.0, progress=False)
TOKEN = "hf_WeightsTestToken0123456789abcdEFGHij"
REGISTRY = load_models(REPO / "config" / "models.yaml")

#: A diffusers pipeline repo's layout (the files huggingface_hub would list), small stand-in bytes.
DIFFUSERS_REPO = {
    "model_index.json": b'{"_class_name": "StableDiffusion3Pipeline"}',
    "scheduler/scheduler_config.json": b"{}",
    "transformer/config.json": b"{}",
    "transformer/diffusion_pytorch_model.safetensors": b"T" * 4096,
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": b"V" * 2048,
    "text_encoder/config.json": b"{}",
    "text_encoder/model.safetensors": b"C" * 1024,
    "text_encoder_2/config.json": b"{}",
    "text_encoder_2/model.safetensors": b"G" * 1024,
    "text_encoder_3/config.json": b"{}",
    "text_encoder_3/model.safetensors": b"X" * 1024,
    "tokenizer/vocab.json": b"{}", "tokenizer_2/vocab.json": b"{}", "tokenizer_3/spiece.model": b"s",
    # what the real repos also hold and a fine-tuning run does not need
    "sd3_medium.safetensors": b"S" * 8192,
    "README.md": b"# model card",
}


def _hub(repo_id: str, gated: bool, files: dict[str, bytes] = DIFFUSERS_REPO) -> FakeHub:
    hub = FakeHub(repo_id=repo_id, repo_type="model", gated=gated, granted_tokens={TOKEN}, page_size=5)
    for path, data in files.items():
        hub.add_file(path, data, lfs=path.endswith(".safetensors"))
    return hub


def _job(entry: dict, weights_dir: Path) -> SimpleNamespace:
    folder = weights_dir / entry["name"]
    return SimpleNamespace(params=SimpleNamespace(entry=entry, download={"retries": 1, "backoff_s": 0.01,
                                                                        "timeout_s": 5.0, "progress": False}),
                           output=SimpleNamespace(inventory=str(folder / "inventory.csv"),
                                                  source=str(folder / "source.json")),
                           input=SimpleNamespace(), wildcards=SimpleNamespace(pretrained=entry["name"]),
                           resources=SimpleNamespace())


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------

#: every network the four papers start from or measure with (issue 12's list)
PAPER_MODELS = {"sd15", "sdxl", "sd3", "pixart_alpha", "flux", "maisi_vae", "maisi_diffusion_unet", "maisi_controlnet",
                "inception_v3_fid", "radimagenet_resnet50", "m3d_clip", "ct_clip", "pillar0", "totalsegmentator",
                "lungmask_r231", "clip_vit_large"}


def test_registry_lists_every_paper_model_with_its_facts():
    assert PAPER_MODELS <= set(REGISTRY)
    for name, entry in REGISTRY.items():
        assert entry["licence"] and entry["used_by"] and entry["size_gb"] > 0, name
        if entry["kind"] == "huggingface":
            assert entry.get("revision"), f"{name}: a Hub entry names the revision it fetches"
        if entry["access"] == "gated":
            assert entry["auth"]["env"] == "HF_TOKEN" or entry["kind"] != "huggingface", name


@pytest.mark.parametrize("change, message", [
    ({"kind": "ftp"}, "kind 'ftp'"),
    ({"access": "secret"}, "access 'secret'"),
    ({"access": "gated", "auth": None}, "names no token variable"),
    ({"licence": ""}, "lacks licence"),
])
def test_registry_rejects_incomplete_entries(tmp_path, change, message):
    entry = {**REGISTRY["sd15"], **change}
    entry.pop("name")
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"sd15": entry}))
    with pytest.raises(ModelRegistryError, match=message):
        load_models(path)


def test_unknown_model_and_bad_names_are_refused(tmp_path):
    with pytest.raises(ModelRegistryError, match="not in the model registry"):
        model_entry(REGISTRY, "sd99")
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"../escape": {k: v for k, v in REGISTRY["sd15"].items() if k != "name"}}))
    with pytest.raises(ModelRegistryError, match="folder name"):
        load_models(path)


# --------------------------------------------------------------------------------------------
# Hub models: gated with and without a token, public without one
# --------------------------------------------------------------------------------------------

def test_gated_model_needs_the_token_and_fetches_only_the_included_files(hf_env, tmp_path, monkeypatch, caplog):
    entry = REGISTRY["sd3"]
    assert entry["access"] == "gated"
    with RunningHub(_hub(entry["repo_id"], gated=True)) as hub:
        e = model_entry(REGISTRY, "sd3", {"endpoint": hub.endpoint})
        monkeypatch.delenv("HF_TOKEN", raising=False)
        with pytest.raises(DownloadError, match="HF_TOKEN"):
            weights_task(_job(e, tmp_path / "weights"))
        assert hub.requests == []  # refused before asking anything
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        job = _job(e, tmp_path / "weights")
        raw = weights_task(job)

    files = pd.read_csv(job.output.inventory)
    fetched = set(files["path"])
    assert "sd3_medium.safetensors" not in fetched and "README.md" not in fetched  # include patterns hold
    assert {"model_index.json", "transformer/diffusion_pytorch_model.safetensors", "text_encoder_3/model.safetensors",
            "tokenizer_3/spiece.model", "scheduler/scheduler_config.json"} <= fetched
    for rel, sha in zip(files["path"], files["sha256"]):
        assert hashlib.sha256(DIFFUSERS_REPO[rel]).hexdigest() == sha
    assert len(raw) == len(files)
    source = json.loads(Path(job.output.source).read_text())
    assert source["commit"] == hub.commit and source["repo_id"] == entry["repo_id"] and source["access"] == "gated"
    # the token is never written anywhere under the test folder, nor logged
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 1_000_000:
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text
    assert model_files("sd3", tmp_path / "weights") == tmp_path / "weights" / "sd3" / "files"


def test_public_model_sends_no_token(hf_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # a login lying around is not sent to a public repo
    entry = REGISTRY["sd15"]
    assert entry["access"] == "public"
    layout = {"model_index.json": b"{}", "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": b"u" * 99,
              "vae/config.json": b"{}", "text_encoder/config.json": b"{}", "tokenizer/vocab.json": b"{}",
              "scheduler/scheduler_config.json": b"{}", "v1-5-pruned.ckpt": b"p" * 999}
    with RunningHub(_hub(entry["repo_id"], gated=False, files=layout)) as hub:
        files = fetch_model(model_entry(REGISTRY, "sd15", {"endpoint": hub.endpoint}), tmp_path / "files", POLICY)
    assert hub.requests and all(r.authorization is None for r in hub.requests)
    assert "v1-5-pruned.ckpt" not in set(files["path"])


def test_pinned_sha256_is_verified_and_a_bad_file_deleted(hf_env, tmp_path):
    entry = REGISTRY["sd3"]
    good = hashlib.sha256(DIFFUSERS_REPO["model_index.json"]).hexdigest()
    with RunningHub(_hub(entry["repo_id"], gated=False)) as hub:
        ok = model_entry(REGISTRY, "sd3", {"endpoint": hub.endpoint, "auth": None, "access": "public",
                                            "sha256": {"model_index.json": good}})
        fetch_model(ok, tmp_path / "ok", POLICY)
        bad = {**ok, "sha256": {"vae/config.json": "0" * 64}}
        with pytest.raises(ChecksumMismatch, match="registry pins"):
            fetch_model(bad, tmp_path / "bad", POLICY)
    assert not (tmp_path / "bad" / "vae" / "config.json").exists()


# --------------------------------------------------------------------------------------------
# release files over HTTP, manual models, the local lookup
# --------------------------------------------------------------------------------------------

def test_http_model_resumes_and_checks_its_sha256(tmp_path):
    data = bytes(range(256)) * 64
    with RunningServer() as server:
        url = server.add_file("/releases/unet_r231.pth", data, drop_first=True)
        entry = model_entry(REGISTRY, "lungmask_r231", {"files": [
            {"path": "unet_r231.pth", "url": url, "sha256": hashlib.sha256(data).hexdigest()}]})
        files = fetch_model(entry, tmp_path / "files", POLICY)
        assert [r.headers.get("Range") for r in server.requests if r.method == "GET"][-1] is not None  # resumed
        wrong = model_entry(REGISTRY, "lungmask_r231", {"files": [
            {"path": "other.pth", "url": url, "sha256": "1" * 64}]})
        with pytest.raises(ChecksumMismatch):
            fetch_model(wrong, tmp_path / "files", POLICY)
    assert list(files["path"]) == ["unet_r231.pth"] and not (tmp_path / "files" / "other.pth").exists()


def test_manual_model_explains_the_steps_then_accepts_the_files(tmp_path):
    entry = REGISTRY["ct_clip"]
    assert entry["access"] in ("manual", "gated")
    manual = model_entry(REGISTRY, "ct_clip", {"kind": "manual", "access": "manual",
                                                "instructions": "Sign the CT-RATE agreement, then copy the file.",
                                                "expect": ["*.pt"]})
    with pytest.raises(Exception, match="Sign the CT-RATE agreement"):
        fetch_model(manual, tmp_path / "files", POLICY)
    (tmp_path / "files" / "CT-CLIP_v2.pt").write_bytes(b"weights")
    assert list(fetch_model(manual, tmp_path / "files", POLICY)["path"]) == ["CT-CLIP_v2.pt"]


def test_missing_model_names_the_registry_entry_and_the_command(tmp_path):
    with pytest.raises(WeightsMissing) as info:
        model_files("sd3", tmp_path / "weights", REGISTRY["sd3"])
    text = str(info.value)
    assert "'sd3'" in text and f"snakemake --cores 1 {inventory_path(tmp_path / 'weights', 'sd3')}" in text
    assert "HF_TOKEN" in text and REGISTRY["sd3"]["repo_id"] in text


def test_a_changed_file_is_caught_by_the_local_lookup(tmp_path):
    folder = tmp_path / "weights" / "m"
    (folder / "files").mkdir(parents=True)
    (folder / "files" / "w.bin").write_bytes(b"1234")
    pd.DataFrame([{"path": "w.bin", "bytes": 4, "sha256": "x"}]).to_csv(folder / "inventory.csv", index=False)
    assert model_files("m", tmp_path / "weights") == folder / "files"
    (folder / "files" / "w.bin").write_bytes(b"12")
    with pytest.raises(WeightsMissing, match="missing or changed"):
        model_files("m", tmp_path / "weights")


# --------------------------------------------------------------------------------------------
# the weights rule in the workflow
# --------------------------------------------------------------------------------------------

def test_weights_rule_fetches_once_with_provenance(tmp_path):
    data = b"\x00lungmask-unet" * 500
    with RunningServer() as server:
        url = server.add_file("/JoHof/lungmask/releases/unet_r231.pth", data)
        config = embedded_config(weights_dir=str(tmp_path / "weights"), pretrained_models={"lungmask_r231": {
            "files": [{"path": "unet_r231.pth", "url": url, "sha256": hashlib.sha256(data).hexdigest()}]}})
        target = str(tmp_path / "weights" / "lungmask_r231" / "inventory.csv")
        run_snakemake(tmp_path / "work", config, target)
        n_requests = len(server.requests)
        again = run_snakemake(tmp_path / "work", config, target, extra=("-n",))
    files = pd.read_csv(target)
    assert list(files["path"]) == ["unet_r231.pth"] and files["sha256"][0] == hashlib.sha256(data).hexdigest()
    prov = json.loads(Path(target + ".prov.json").read_text())
    assert prov["rule"] == "weights"
    assert "Nothing to be done" in again.stdout + again.stderr and len(server.requests) == n_requests


def test_readme_lists_every_registered_model():
    from medsynth.weights.registry import markdown_table

    assert markdown_table(REGISTRY) in (REPO / "README.md").read_text(), \
        "README's model table is stale: paste medsynth.weights.registry.markdown_table(load_models('config/models.yaml'))"


# --------------------------------------------------------------------------------------------
# `pretrained: <registry model>` in a study config
# --------------------------------------------------------------------------------------------

def test_registry_references_become_local_folders(tmp_path):
    from medsynth.weights.refs import resolve_pretrained

    (tmp_path / "mine").mkdir()
    config = {"generator": {"backbone": {"pretrained": "sd3"}, "text_encoder": {"pretrained": "clip_vit_large"}},
              "vae": {"model": {"pretrained": "maisi_vae/models/autoencoder_v1.pt"},
                      "losses": {"perceptual_pretrained_path": None}},
              "architectures": {"dit": {"backbone": {"pretrained": "mine"}}},  # an existing folder stays a folder
              "volumes": {"generator": {"backbone": {"pretrained": "not-a-model"}}}, "seed": 1,
              "masks": {"segmenters": {"ts": {"backend": "totalsegmentator",
                                              "totalsegmentator": {"weights_dir": "totalsegmentator"}},
                                       "lung": {"backend": "lungmask",
                                                "lungmask": {"modelpath": "lungmask_r231/unet_r231-d5d2fc3d.pth"}}}},
              "metrics": {"radimagenet_pretrained_path": "radimagenet_resnet50/RadImageNet-ResNet50_notop.pth",
                          "inception_pretrained_path": None}}
    used = resolve_pretrained(config, REGISTRY, tmp_path / "w", base_dir=tmp_path)
    assert used == {"generator": ["clip_vit_large", "sd3"], "vae": ["maisi_vae"],
                    "masks": ["lungmask_r231", "totalsegmentator"], "metrics": ["radimagenet_resnet50"]}
    assert config["masks"]["segmenters"]["ts"]["totalsegmentator"]["weights_dir"] == str(
        tmp_path / "w" / "totalsegmentator" / "files")
    assert config["generator"]["backbone"]["pretrained"] == str(tmp_path / "w" / "sd3" / "files")
    assert config["vae"]["model"]["pretrained"] == str(tmp_path / "w" / "maisi_vae" / "files" / "models" /
                                                        "autoencoder_v1.pt")
    assert config["architectures"]["dit"]["backbone"]["pretrained"] == "mine"
    assert config["volumes"]["generator"]["backbone"]["pretrained"] == "not-a-model"


def test_rules_that_load_a_registry_model_fetch_it_first(tmp_path):
    config = embedded_config(weights_dir=str(tmp_path / "weights"))
    config["generator"] = {"backbone": {"pretrained": "sd15"}}
    proc = run_snakemake(tmp_path / "work", config, extra=("-n", "--quiet", "rules"))
    text = proc.stdout + proc.stderr
    assert "weights" in text.split() and "base" in text.split()
    summary = run_snakemake(tmp_path / "work", config, f"{config['results_dir']}/example/base/final",
                            extra=("-n", "--printshellcmds")).stdout
    inventory = str(tmp_path / "weights" / "sd15" / "inventory.csv")
    assert summary.count("rule weights:") == 1
    base = summary[summary.index("rule base:"):]
    assert inventory in base[:base.index("reason:")]  # an input of base, not only the weights rule's output
