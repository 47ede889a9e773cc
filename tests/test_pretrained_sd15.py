"""Stable Diffusion 1.5 end to end from a pretrained checkpoint: Hub -> weights rule -> adapter -> stages -> sampling.

A tiny checkpoint folder with the real repository layout (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/, plus files a fine-tuning run does not fetch), made from the real diffusers /
transformers classes at tiny sizes and checked by loading it as a ``StableDiffusionPipeline``; served by the
loopback Hub stand-in; fetched by the weights task with the real ``sd15`` registry entry (only ``endpoint``
overridden); then the generator stages start from it on 1-channel CT slices with five masks: the VAE is
SD's 3-channel one, the text encoder its CLIP, the backbone its UNet widened with zero-initialised mask
channels (unchanged at step 0), one stage-2 LoRA step and one sampling call.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ct_slice_shard
from hfhub_server import FakeHub, RunningHub

NAMES = ["liver", "lungs", "bone", "kidneys", "spleen"]
TEXT_DIM = 32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tokenizer():
    """A CLIP BPE tokenizer over the 256 byte symbols (and their word-final forms), CLIP's special tokens."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77), vocab


def make_tiny_sd15(folder: Path) -> dict[str, bytes]:
    """Write a tiny SD 1.5 repo into ``folder``; return every file (repo path -> bytes) for the Hub stand-in."""
    import diffusers
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32),
                         layers_per_block=1, norm_num_groups=8, cross_attention_dim=TEXT_DIM,
                         attention_head_dim=8).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  layers_per_block=1, norm_num_groups=8, sample_size=32).save_pretrained(folder / "vae")
    tok, vocab = _tokenizer()
    tok.save_pretrained(folder / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=TEXT_DIM, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                 bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                 pad_token_id=vocab["<|endoftext|>"])).save_pretrained(folder / "text_encoder")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
                  num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    (folder / "v1-5-pruned-emaonly.safetensors").write_bytes(b"\0" * 4096)  # the single-file checkpoint
    (folder / "README.md").write_text("# tiny stand-in of stable-diffusion-v1-5\n")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sd15_repo(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("sd15_repo")
    return folder, make_tiny_sd15(folder)


def test_the_tiny_checkpoint_has_the_real_layout(sd15_repo):
    from diffusers import StableDiffusionPipeline

    folder, _ = sd15_repo
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and pipe.vae.config.in_channels == 3
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    assert pipe.tokenizer("liver").input_ids[0] == pipe.tokenizer.bos_token_id


@pytest.fixture(scope="module")
def fetched(sd15_repo, tmp_path_factory) -> Path:
    """The repo served by the Hub stand-in and fetched by the weights task (real sd15 entry, endpoint only)."""
    from huggingface_hub import constants
    from medsynth.tasks.weights import weights as weights_task
    from medsynth.weights import load_models, model_entry, model_files

    _, files = sd15_repo
    root = tmp_path_factory.mktemp("weights")
    registry = load_models(Path(__file__).resolve().parents[1] / "config" / "models.yaml")
    hub = FakeHub(repo_id=registry["sd15"]["repo_id"], repo_type="model", gated=False)
    for path, data in files.items():
        hub.add_file(path, data, lfs=path.endswith((".safetensors", ".bin")))
    mp = pytest.MonkeyPatch()
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
    mp.setattr(constants, "HF_HUB_CACHE", str(root / "hf_cache"))
    try:
        with RunningHub(hub):
            entry = model_entry(registry, "sd15", {"endpoint": hub.endpoint})
            job = SimpleNamespace(params=SimpleNamespace(entry=entry, download={"retries": 1, "progress": False}),
                                  output=SimpleNamespace(inventory=str(root / "sd15" / "inventory.csv"),
                                                         source=str(root / "sd15" / "source.json")))
            weights_task(job)
    finally:
        mp.undo()
    inventory = pd.read_csv(root / "sd15" / "inventory.csv")
    assert "v1-5-pruned-emaonly.safetensors" not in set(inventory["path"]) and "README.md" not in set(inventory["path"])
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
            "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"} \
        <= set(inventory["path"])
    return model_files("sd15", root, entry)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return ct_slice_shard(tmp_path_factory.mktemp("shards"), NAMES)


def _gen(files: Path) -> dict:
    return {"backbone": {"type": "unet2d_condition", "pretrained": str(files), "subfolder": None,
                         "local_files_only": True, "params": {"in_channels": 4 + len(NAMES)}},
            "text_encoder": {"type": "clip", "pretrained": str(files), "local_files_only": True},
            "max_length": 16, "threads": 1,
            "severity": {"organ": "liver", "thresholds": [0.05, 0.15], "pathology": "liver involvement"}}


def test_widened_pretrained_unet_is_unchanged_at_step_zero(fetched):
    from diffusers import UNet2DConditionModel
    from medsynth.models.backbones import build_backbone

    original = UNet2DConditionModel.from_pretrained(str(fetched), subfolder="unet", local_files_only=True).eval()
    widened = build_backbone(_gen(fetched)["backbone"], key="generator.backbone").eval()
    assert widened.conv_in.in_channels == 4 + len(NAMES)
    x, masks = torch.randn(2, 4, 8, 8), torch.rand(2, len(NAMES), 8, 8) - 0.5
    text = torch.randn(2, 5, TEXT_DIM)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        a = original(x, t, encoder_hidden_states=text).sample
        b = widened(torch.cat([x, masks], dim=1), t, encoder_hidden_states=text).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_sd15_stages_lora_step_and_sampling_on_grey_ct_with_masks(fetched, shards, tmp_path):
    from safetensors.torch import load_file

    from medsynth.generator import run_base, run_stage1, run_stage2, variant_config
    from medsynth.generator.sampling import sample_condition_set
    from medsynth.io.generated import load_generated
    from medsynth.vae.stage import run_vae

    gen = _gen(fetched)
    vae_cfg = {"model": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "pretrained": str(fetched),
                         "pretrained_subfolder": "vae", "local_files_only": True},
               "steps": 1, "batch_size": 4, "checkpoint_every": 0, "progress": False, "seed": 1, "stats_batch_size": 8}
    run_vae(shards, tmp_path / "vae", vae_cfg)
    vae, stats = tmp_path / "vae" / "final", tmp_path / "vae" / "latent_stats.json"
    stage = {"steps": 1, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 0, "progress": False, "seed": 3,
             "cond_dropout": 0.25, "warmup_steps": 0}
    base = {**stage, "select": {"split": ["train"]}}
    run_base(shards, vae, stats, tmp_path / "base", gen, base)
    stage1 = {**stage, "select": {"split": ["train"], "modality": ["CT"]},
              "ewc": {"fisher_batches": 1, "fisher_batch_size": 4, "top_fraction": 0.2, "lambda": 10.0}}
    run_stage1(shards, vae, stats, tmp_path / "base" / "final", tmp_path / "stage1", gen, stage1, base)
    stage2 = {**stage, "select": {"split": ["train"], "modality": ["MR"]}, "severity_prompt": True, "method": "lora",
              "objective": "tweedie", "lora": {"rank": 2, "alpha": 2.0},
              "consistency": {"temporal_weight": 0.1, "spatial_weight": 0.1}}
    cfg = variant_config(stage2, {"victr": {}}, "victr")
    run_stage2(shards, vae, stats, tmp_path / "stage1" / "final", tmp_path / "stage1" / "ewc.safetensors",
               tmp_path / "stage2", gen, copy.deepcopy(cfg))
    adapter = load_file(str(next((tmp_path / "stage2" / "final").rglob("adapter_model.safetensors"))))
    assert adapter and all("lora" in k for k in adapter)
    out = [tmp_path / f"s.{ext}" for ext in ("safetensors", "csv", "json")]
    sample_condition_set(shards, vae, stats, tmp_path / "stage2" / "final", tmp_path / "stage1" / "final", *out, gen,
                         cfg, {"guidance_scale": 2.0, "seed": 5, "batch_size": 4}, "euler-2", {"split": ["test"]})
    images, masks, names = load_generated(out[0])
    assert images.shape[1:] == (1, 32, 32) and len(images) == 4 and np.isfinite(images).all() and names == NAMES
    assert json.loads(out[2].read_text())["nfe"] == 2
