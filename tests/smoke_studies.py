"""The smoke studies (config/studies/<paper>_smoke.yaml) through snakemake, on tiny real-layout checkpoints.

Each smoke study names the registry models of its paper study (``pretrained: sd15``, ``cxr_bert``,
``maisi_vae/models/autoencoder_v1.pt``, ...). :func:`run_smoke_study` builds a tiny checkpoint of every one of
them in the layout of its real repository (the files the registry entry's ``include`` fetches, with the real
classes, file names and keys), serves each repository from a loopback Hub stand-in (tests/hfhub_server.py),
points the study's ``pretrained_models.<name>.endpoint`` at it and runs ``snakemake --cores 2`` on the
study's targets, so the weights rule fetches every model before any stage loads it. Every Python process of
the run gets the loopback-only socket guard of tests/smoke_netguard/sitecustomize.py: a stage that tried
to reach the network would fail and be listed.

The study file is merged onto the paper study it ``extends`` (one level, as the Snakefile does) and written
out whole (``extends: null``) into the test's working folder, with the test's own settings on top: the
results folder, a per-test weights folder and the stand-ins' endpoints.
"""

from __future__ import annotations

import copy
import json
import os
import string
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from hfhub_server import FakeHub, RunningHub
from paper_dag import study_config
from tiny_pipelines import make_tiny_sd15

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).resolve().parent / "smoke_netguard"
#: the token the gated stand-ins grant (the weights rule reads it from HF_TOKEN, as it would a real one)
TOKEN = "hf_SmokeStudyToken0123456789abcdefgh"



# -------------------------------------------------------------------------------------------------------------
# tiny checkpoints in the registry models' real repository layouts
# -------------------------------------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_tiny_sd15_inpainting(folder: Path, config: dict) -> dict[str, bytes]:
    """stable-diffusion-v1-5/stable-diffusion-inpainting: SD 1.5's parts with a 9-channel UNet (4 noisy latent
    + 1 mask + 4 masked-image latent channels) and the inpainting pipeline's index."""
    from diffusers import UNet2DConditionModel

    make_tiny_sd15(folder)
    sd15_unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    unet = UNet2DConditionModel.from_config({**sd15_unet.config, "in_channels": 9})
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.02)
    unet.save_pretrained(folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionInpaintPipeline"}))
    (folder / "v1-5-pruned-emaonly.safetensors").unlink()
    (folder / "sd-v1-5-inpainting.ckpt").write_bytes(b"\0" * 4096)  # the single-file checkpoint (not fetched)
    return _files(folder)


#: CXR-BERT's remote code, as the repository ships it: a BertConfig with the projection size, the BERT
#: tokenizer under its own name, and BertForMaskedLM with a projection head on the [CLS] token whose forward
#: returns the last hidden states (written for this stand-in; same classes, module names and outputs)
_CXRBERT_CONFIGURATION = '''\
from transformers import BertConfig, BertTokenizer


class CXRBertConfig(BertConfig):
    """BERT's config with the size of the joint image-text space."""

    model_type = "cxr-bert"

    def __init__(self, projection_size: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.projection_size = projection_size


class CXRBertTokenizer(BertTokenizer):
    """BERT's WordPiece tokenizer."""
'''

_CXRBERT_MODELING = '''\
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn
from transformers import BertForMaskedLM
from transformers.modeling_outputs import ModelOutput

from .configuration_cxrbert import CXRBertConfig


@dataclass
class CXRBertOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor = None
    logits: Optional[torch.FloatTensor] = None
    cls_projected_embedding: Optional[torch.FloatTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor]] = None
    attentions: Optional[Tuple[torch.FloatTensor]] = None


class BertProjectionHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_to_hidden = nn.Linear(config.hidden_size, config.projection_size)
        self.transform_act_fn = nn.functional.gelu
        self.LayerNorm = nn.LayerNorm(config.projection_size, eps=1e-12)
        self.dense_to_output = nn.Linear(config.projection_size, config.projection_size)

    def forward(self, hidden_states):
        h = self.LayerNorm(self.transform_act_fn(self.dense_to_hidden(hidden_states)))
        return self.dense_to_output(h)


class CXRBertModel(BertForMaskedLM):
    config_class = CXRBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.cls_projection_head = BertProjectionHead(config)
        self.post_init()

    def forward(self, input_ids, attention_mask, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None,
                output_cls_projected_embedding=None, return_dict=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                              output_attentions=output_attentions, output_hidden_states=True, return_dict=True)
        last = out.hidden_states[-1]
        projected = self.cls_projection_head(last[:, 0, :]) if output_cls_projected_embedding else None
        return CXRBertOutput(last_hidden_state=last, logits=out.logits, cls_projected_embedding=projected,
                             hidden_states=out.hidden_states if output_hidden_states else None,
                             attentions=out.attentions)
'''


def make_tiny_cxr_bert(folder: Path, config: dict) -> dict[str, bytes]:
    """microsoft/BiomedVLP-CXR-BERT-specialized: config.json with ``auto_map`` to the repository's own
    configuration_cxrbert.py / modeling_cxrbert.py (``trust_remote_code``), a WordPiece vocab.txt, the
    tokenizer config naming CXRBertTokenizer, pytorch_model.bin. The release's width (768, what the
    generators' cross-attention takes), one layer and a character vocabulary keep it at a few MB."""
    import importlib.util

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_cxrbert.py").write_text(_CXRBERT_CONFIGURATION)
    (folder / "modeling_cxrbert.py").write_text(_CXRBERT_MODELING)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": True, "do_basic_tokenize": True, "model_max_length": 512, **special,
        "tokenizer_class": "CXRBertTokenizer",
        "auto_map": {"AutoTokenizer": ["configuration_cxrbert.CXRBertTokenizer", None]}}))
    # build the model from the repository's own code, as transformers will load it
    package = f"tiny_cxrbert_{os.getpid()}"
    modules = {}
    for name in ("configuration_cxrbert", "modeling_cxrbert"):
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", folder / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = modules[name]
    sys.modules[package] = type(sys)(package)
    sys.modules[package].__path__ = [str(folder)]
    try:
        for module in modules.values():
            module.__spec__.loader.exec_module(module)
        cfg = modules["configuration_cxrbert"].CXRBertConfig(
            vocab_size=len(vocab), hidden_size=768, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=512, pad_token_id=0, projection_size=128, attention_probs_dropout_prob=0.25,
            hidden_dropout_prob=0.25)
        cfg.auto_map = {"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                        "AutoModel": "modeling_cxrbert.CXRBertModel"}
        cfg.architectures = ["CXRBertModel"]
        torch.manual_seed(0)
        model = modules["modeling_cxrbert"].CXRBertModel(cfg)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "config.json").write_text(cfg.to_json_string())
    finally:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
    (folder / "README.md").write_text("# tiny stand-in of BiomedVLP-CXR-BERT-specialized\n")
    return _files(folder)


#: the MAISI release's files (nvidia/NV-Generate-CT) of each registry entry
MAISI_FILES = {"maisi_vae": "models/autoencoder_v1.pt", "maisi_diffusion_unet": "models/diff_unet_3d_rflow-ct.pt",
               "maisi_controlnet": "models/controlnet_3d_rflow-ct.pt"}


def make_tiny_maisi_release(folder: Path, config: dict) -> dict[str, bytes]:
    """nvidia/NV-Generate-CT: MAISI's VAE (a plain state dict), the rectified-flow UNet (``unet_state_dict``,
    ``scale_factor``) and its ControlNet (``controlnet_state_dict``) with the architecture the study's
    ``volumes`` section gives (the release's switches, tiny widths), and the network config file."""
    from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    from medsynth.models.maisi_backbone import UNET_SHARED_WITH_CONTROLNET
    from medsynth.vae import build_autoencoder

    torch.manual_seed(0)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "configs").mkdir(exist_ok=True)
    vae_model = {**config["volumes"]["vae"]["model"], "pretrained": None}
    torch.save(build_autoencoder(vae_model).state_dict(), folder / MAISI_FILES["maisi_vae"])
    params = config["volumes"]["generator"]["backbone"]["params"]
    unet_params = dict(params["unet_params"])
    unet = DiffusionModelUNetMaisi(**unet_params)
    for p in unet.parameters():  # a trained-looking UNet (MONAI zero-initialises its output)
        torch.nn.init.normal_(p, std=0.05)
    torch.save({"unet_state_dict": unet.state_dict(), "scale_factor": torch.tensor(1.0)},
               folder / MAISI_FILES["maisi_diffusion_unet"])
    shared = {k: unet_params[k] for k in UNET_SHARED_WITH_CONTROLNET if k in unet_params}
    controlnet = ControlNetMaisi(**shared, **params["controlnet_params"])
    for p in controlnet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save({"controlnet_state_dict": controlnet.state_dict()}, folder / MAISI_FILES["maisi_controlnet"])
    (folder / "configs" / "config_network_rflow.json").write_text(json.dumps({"latent_channels": 4}))
    (folder / "models" / "mask_generation_autoencoder.pt").write_bytes(b"\0" * 64)  # not fetched
    (folder / "README.md").write_text("# tiny stand-in of NV-Generate-CT\n")
    return _files(folder)


def make_tiny_ct_clip(folder: Path, config: dict) -> dict[str, bytes]:
    """ibrahimhamamci/CT-RATE (a gated dataset repo): CT-CLIP v2's checkpoint at the path the CT-CLIP code names
    (``torch.save`` of the CTCLIP state dict, every published key, tiny sizes: tests/test_clip_extractors.py)
    beside a few of the dataset's own files, which the registry entry does not fetch."""
    from test_clip_extractors import TINY_CT, ct_clip_state

    path = folder / "models" / "CT-CLIP-Related" / "CT-CLIP_v2.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ct_clip_state(TINY_CT), path)
    (folder / "dataset" / "metadata").mkdir(parents=True, exist_ok=True)
    (folder / "dataset" / "metadata" / "train_metadata.csv").write_text("VolumeName\ntrain_1_a_1.nii.gz\n")
    (folder / "README.md").write_text("# tiny stand-in of CT-RATE\n")
    return _files(folder)


def make_tiny_m3d_clip(folder: Path, config: dict) -> dict[str, bytes]:
    """GoodBaiBai88/M3D-CLIP: ``config.json`` (M3DCLIPConfig's fields) and ``model.safetensors`` with every
    published key (vision tower as MONAI's ViT names it, the BERT text side, both projections) at tiny sizes
    (tests/test_clip_extractors.py), beside a README the registry entry does not fetch."""
    from safetensors.torch import save_file
    from test_clip_extractors import M3D_CONFIG, m3d_reference

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(M3D_CONFIG))
    save_file({k: v.contiguous() for k, v in m3d_reference()[2].items()}, str(folder / "model.safetensors"))
    (folder / "README.md").write_text("# tiny stand-in of M3D-CLIP\n")
    return _files(folder)


#: registry model -> builder of its repository's tiny stand-in (folder, merged study config) -> files
BUILDERS = {
    "ct_clip": make_tiny_ct_clip,
    "m3d_clip": make_tiny_m3d_clip,
    "sd15": lambda folder, config: make_tiny_sd15(folder),
    "sd15_inpainting": make_tiny_sd15_inpainting,
    "cxr_bert": make_tiny_cxr_bert,
    "maisi_vae": make_tiny_maisi_release,
    "maisi_diffusion_unet": make_tiny_maisi_release,
    "maisi_controlnet": make_tiny_maisi_release,
}


# -------------------------------------------------------------------------------------------------------------
# the run
# -------------------------------------------------------------------------------------------------------------

def smoke_config(paper: str) -> dict:
    """config/studies/<paper>_smoke.yaml merged onto the paper study it extends (as the Snakefile merges it),
    validated (the schema's defaults filled in)."""
    from snakemake.utils import validate

    path = REPO / "config" / "studies" / f"{paper}_smoke.yaml"
    own = yaml.safe_load(path.read_text())
    assert own["extends"] == f"config/studies/{paper}.yaml", f"{path.name} must extend its paper study"
    config = study_config(path)
    validate(config, str(REPO / "config" / "schema.yaml"))
    return config


def registry_models(config: dict) -> dict[str, list[str]]:
    """Config section -> the registry models it names (what the rules take as inputs)."""
    from medsynth.weights import load_models
    from medsynth.weights.refs import resolve_pretrained

    registry = load_models(REPO / config["model_registry"])
    return resolve_pretrained(copy.deepcopy(config), registry, "/nonexistent-weights", REPO)


@dataclass
class SmokeRun:
    """What one smoke-study run left behind."""

    config: dict
    registry: dict
    work: Path
    results: Path
    weights: Path
    hubs: dict[str, FakeHub]
    seconds: float
    stdout: str
    netguard: list[str] = field(default_factory=list)


def run_smoke_study(paper: str, tmp_path: Path, targets: list[str], prioritize: list[str] = (),
                    timeout: int = 900) -> SmokeRun:
    """Build and serve the tiny checkpoints of every registry model ``paper``'s smoke study names, then run
    snakemake on ``targets`` (relative to the results folder of the study); ``prioritize``: outputs whose
    jobs the scheduler starts first (the longest chain: the run's wall time is that chain's)."""
    from medsynth.weights import load_models

    config = smoke_config(paper)
    registry = load_models(REPO / config["model_registry"])
    used = sorted({name for names in registry_models(config).values() for name in names})
    missing = [name for name in used if name not in BUILDERS]
    assert not missing, f"{paper}_smoke names registry models without a tiny stand-in: {missing}"
    by_repo: dict[str, list[str]] = {}
    for name in used:
        by_repo.setdefault(registry[name]["repo_id"], []).append(name)
    work, weights = tmp_path / "work", tmp_path / "weights"
    work.mkdir(parents=True)
    hubs: dict[str, FakeHub] = {}
    with ExitStack() as stack:
        endpoints = {}
        for repo_id, names in by_repo.items():
            entry = registry[names[0]]
            files: dict[str, bytes] = {}
            for builder in dict.fromkeys(BUILDERS[name] for name in names):  # one repo, several entries (MAISI)
                files.update(builder(tmp_path / "repos" / repo_id.replace("/", "--"), config))
            # gated and a token required (CT-RATE): the stand-in refuses requests without the test's token
            gated = entry["access"] == "gated" and (entry.get("auth") or {}).get("required", True)
            hub = FakeHub(repo_id=repo_id, repo_type=entry.get("repo_type", "model"), gated=gated,
                          granted_tokens={TOKEN})
            for path, data in files.items():
                hub.add_file(path, data, lfs=path.endswith((".safetensors", ".bin", ".pt", ".ckpt")))
            stack.enter_context(RunningHub(hub))
            for name in names:
                hubs[name] = hub
                endpoints[name] = {"endpoint": hub.endpoint}
        run_config = copy.deepcopy(config)
        run_config.update(extends=None, results_dir="results", weights_dir=str(weights),
                          pretrained_models={**run_config["pretrained_models"], **endpoints})
        (work / "config.yaml").write_text(yaml.safe_dump(run_config))
        guard_log = tmp_path / "netguard.log"
        # snakemake's SLURM executor plugin runs `scontrol show config` while it builds its command line and
        # waits up to 10 s for a controller; a local run never uses SLURM, so a stub answers at once
        stubs = tmp_path / "bin"
        stubs.mkdir()
        (stubs / "scontrol").write_text("#!/bin/sh\nexit 1\n")
        (stubs / "scontrol").chmod(0o755)
        env = {k: v for k, v in os.environ.items()
               if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HTTP_PROXY",
                            "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")}
        env.update(HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1",
                   MEDSYNTH_NETGUARD_LOG=str(guard_log), PATH=os.pathsep.join([str(stubs), os.environ["PATH"]]),
                   PYTHONPATH=os.pathsep.join([str(NETGUARD), *filter(None, [os.environ.get("PYTHONPATH")])]))
        results = f"results/{config['study']}"
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "config.yaml"), "--cores", "2",
               *(f"{results}/{t}" for t in targets)]
        if prioritize:
            cmd += ["--prioritize", *(f"{results}/{t}" for t in prioritize)]
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise AssertionError(f"{paper}_smoke: snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-10000:]}")
    attempts = guard_log.read_text().split("\n\n") if guard_log.exists() else []
    return SmokeRun(run_config, registry, work, work / results, weights, hubs, seconds, proc.stdout + proc.stderr,
                    [a for a in attempts if a.strip()])
