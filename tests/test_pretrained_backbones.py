"""The five ViCTr backbones end to end from a pretrained checkpoint: Hub -> weights rule -> adapter -> stages -> sampling.

For SD 1.5, SDXL, SD3, PixArt-alpha and Flux, a tiny checkpoint folder with the real repository layout
(:mod:`tiny_pipelines`: model_index.json, unet/ or transformer/, vae/, every text encoder and tokenizer
folder, scheduler/, plus files a fine-tuning run does not fetch) is checked by loading it as its diffusers
pipeline, served by the loopback Hub stand-in (SD3 and Flux gated: refused without the token, fetched with
it) and fetched by the weights task with the real registry entry (only ``endpoint`` overridden; checksums
recorded and verified on lookup). Then:

- the text encoders give what the diffusers pipeline's own ``encode_prompt`` gives (tokens at the real
  positions, pooled vectors);
- the backbone widened with zero-initialised mask channels predicts what the release does (step 0);
- the generator stages start from it on 1-channel CT slices with five masks: the VAE is the pipeline's
  3-channel one, one stage-2 LoRA step, one sampling call.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ct_slice_shard
from stand_in import fetch_from_stand_in, stages_and_sampling
from tiny_pipelines import TINY_PIPELINES

NAMES = ["liver", "lungs", "bone", "kidneys", "spleen"]
M = len(NAMES)
MAX_LENGTH = 16

pytestmark = pytest.mark.usefixtures("one_torch_thread", "loopback_module")  # no network beyond 127.0.0.1

#: per registry entry: the generator's backbone and text encoder, the latent channels, the model's subfolder
CASES = {
    "sd15": ({"type": "unet2d_condition", "params": {"in_channels": 4 + M}}, {"type": "clip", "padding": "pipeline"}, 4,
             "unet"),
    "sdxl": ({"type": "sdxl", "params": {"in_channels": 4 + M}}, {"type": "sdxl"}, 4, "unet"),
    "sd3": ({"type": "sd3", "params": {"in_channels": 16 + M}}, {"type": "sd3"}, 16, "transformer"),
    "pixart_alpha": ({"type": "pixart", "params": {"in_channels": 4 + M, "out_channels": 4}},
                     {"type": "t5", "padding": "pipeline"}, 4, "transformer"),
    "flux": ({"type": "flux", "params": {"in_channels": (16 + M) * 4}}, {"type": "flux"}, 16, "transformer"),
}
#: files each fetched repo must hold (beyond model_index.json and scheduler/)
FETCHED = {
    "sd15": ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "tokenizer/tokenizer.json"],
    "sdxl": ["unet/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors", "tokenizer_2/tokenizer.json"],
    "sd3": ["transformer/diffusion_pytorch_model.safetensors", "text_encoder_3/model.safetensors",
            "tokenizer_3/tokenizer.json"],
    "pixart_alpha": ["transformer/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer.json"],
    "flux": ["transformer/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors",
             "tokenizer_2/tokenizer.json"],
}


@pytest.fixture(scope="module")
def registry():
    from medsynth.weights import load_models

    return load_models(Path(__file__).resolve().parents[1] / "config" / "models.yaml")


@pytest.fixture(scope="module", params=list(CASES))
def case(request, registry, tmp_path_factory, loopback_module) -> SimpleNamespace:
    """One backbone's tiny repo, served by the Hub stand-in and fetched by the weights task."""
    name = request.param
    make, pipeline = TINY_PIPELINES[name]
    files = make(tmp_path_factory.mktemp(f"{name}_repo"))
    root = tmp_path_factory.mktemp("weights")
    local = fetch_from_stand_in(registry, [name], files, root)[name]
    inventory = pd.read_csv(root / name / "inventory.csv")
    fetched = set(inventory["path"])
    assert "README.md" not in fetched and not any(p.count("/") == 0 and p.endswith(".safetensors") for p in fetched)
    assert {"model_index.json", "scheduler/scheduler_config.json", *FETCHED[name]} <= fetched
    for rel, sha in zip(inventory["path"], inventory["sha256"]):
        assert hashlib.sha256(files[rel]).hexdigest() == sha
    return SimpleNamespace(name=name, pipeline=pipeline, files=local,
                           backbone=CASES[name][0], text=CASES[name][1], latent=CASES[name][2],
                           subfolder=CASES[name][3])


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return ct_slice_shard(tmp_path_factory.mktemp("shards"), NAMES)


def _gen(case) -> dict:
    return {"backbone": {**copy.deepcopy(case.backbone), "pretrained": str(case.files), "subfolder": None,
                         "local_files_only": True},
            "text_encoder": {**case.text, "pretrained": str(case.files), "local_files_only": True},
            "max_length": MAX_LENGTH, "threads": 1,
            "severity": {"organ": "liver", "thresholds": [0.05, 0.15], "pathology": "liver involvement"}}


def _pipeline(case):
    import diffusers

    return getattr(diffusers, case.pipeline).from_pretrained(str(case.files), local_files_only=True)


def test_text_encoders_give_what_the_pipeline_gives(case):
    """Tokens, mask and pooled vector equal what the diffusers pipeline's ``encode_prompt`` gives
    (``padding: pipeline``; 77 tokens: what SD 1.5 / SDXL / SD3's CLIPs always encode)."""
    from medsynth.models.text import build_text_encoder

    pipe = _pipeline(case)
    enc = build_text_encoder({**case.text, "pretrained": str(case.files), "local_files_only": True})
    prompts, n = ["liver ct", "lungs, bone", ""], 77  # lower case: PixArt's pipeline lowers prompts
    tokens, keep = enc.encode(prompts, n)
    pooled = enc.encode_pooled(prompts, n)
    kw = {"device": "cpu", "num_images_per_prompt": 1}
    ref_keep = ref_pooled = None
    with torch.no_grad():
        if case.name == "sd15":
            ref, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, **kw)
        elif case.name == "sdxl":
            ref, _, ref_pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, **kw)
        elif case.name == "sd3":
            ref, _, ref_pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False,
                                                       max_sequence_length=n, **kw)
        elif case.name == "pixart_alpha":
            ref, ref_keep, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, clean_caption=False,
                                                     max_sequence_length=n, **kw)
        else:  # flux
            ref, ref_pooled, _ = pipe.encode_prompt(prompts, prompts, max_sequence_length=n, **kw)
    assert tokens.shape == ref.shape and tokens.shape[-1] == enc.dim
    assert torch.allclose(tokens, ref.float(), atol=1e-5)
    assert torch.equal(keep, torch.ones_like(keep) if ref_keep is None else ref_keep.bool())
    assert (pooled is None) == (ref_pooled is None)
    if ref_pooled is not None:
        assert pooled.shape == (3, enc.pooled_dim) and torch.allclose(pooled, ref_pooled.float(), atol=1e-5)
    # masked padding (the default of single encoders): real positions as the pipeline, padded ones zero
    masked = build_text_encoder({**case.text, "padding": "masked", "pretrained": str(case.files),
                                 "local_files_only": True})
    m_tokens, m_keep = masked.encode(prompts, n)
    assert torch.all(m_tokens[~m_keep] == 0) and m_keep[:, 0].all() and not m_keep.all()


def test_widened_pretrained_backbone_predicts_what_the_release_does(case):
    from medsynth.models.backbones import ADAPTERS, build_backbone, predict
    from medsynth.models.text import build_text_encoder

    adapter = ADAPTERS[case.backbone["type"]]
    original = adapter.model_class.from_pretrained(str(case.files), subfolder=case.subfolder,
                                                   local_files_only=True).eval()
    widened = build_backbone(_gen(case)["backbone"], key="generator.backbone").eval()
    enc = build_text_encoder({**case.text, "pretrained": str(case.files), "local_files_only": True})
    text, keep = enc.encode(["liver", "CT, lungs and bone"], MAX_LENGTH)
    pooled = enc.encode_pooled(["liver", "CT, lungs and bone"], MAX_LENGTH)
    x, masks = torch.randn(2, case.latent, 8, 8), torch.rand(2, M, 8, 8) - 0.5
    t = torch.tensor([0.1, 0.7])
    with torch.no_grad():
        a = predict(original, x, t, text, keep, pooled=pooled)
        b = predict(widened, x, t, text, keep, mask=masks, pooled=pooled)
    if case.name == "pixart_alpha":  # the release predicts noise and a variance; the narrowed head keeps the noise
        assert a.shape[1] == 2 * case.latent
        a = a[:, :case.latent]
    assert b.shape == (2, case.latent, 8, 8) and torch.allclose(a, b, atol=1e-5)


def test_stages_lora_step_and_sampling_on_grey_ct_with_masks(case, shards, tmp_path):
    from medsynth.io.generated import load_generated
    from medsynth.vae.stage import run_vae

    gen = _gen(case)
    vae_cfg = {"model": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "pretrained": str(case.files),
                         "pretrained_subfolder": "vae", "local_files_only": True},
               "steps": 1, "batch_size": 4, "lr": 1e-4, "checkpoint_every": 0, "progress": False, "seed": 1,
               "stats_batch_size": 8}
    run_vae(shards, tmp_path / "vae", vae_cfg)
    vae, stats = tmp_path / "vae" / "final", tmp_path / "vae" / "latent_stats.json"
    assert len(json.loads(stats.read_text())["mean"]) == case.latent
    stage = {"steps": 1, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 0, "progress": False, "seed": 3,
             "cond_dropout": 0.25, "warmup_steps": 0}
    base = {**stage, "select": {"split": ["train"]}}
    stage1 = {**stage, "select": {"split": ["train"], "modality": ["CT"]},
              "ewc": {"fisher_batches": 1, "fisher_batch_size": 4, "top_fraction": 0.2, "lambda": 10.0}}
    stage2 = {**stage, "select": {"split": ["train"], "modality": ["MR"]}, "severity_prompt": True, "method": "lora",
              "objective": "tweedie", "lora": {"rank": 2, "alpha": 2.0},
              "consistency": {"temporal_weight": 0.1, "spatial_weight": 0.1}}
    out = stages_and_sampling(shards, vae, stats, gen, base, stage1, stage2, tmp_path,
                              {"guidance_scale": 2.0, "seed": 5, "batch_size": 4})
    images, masks, names = load_generated(out[0])
    assert images.shape[1:] == (1, 32, 32) and len(images) == 4 and np.isfinite(images).all() and names == NAMES
    assert json.loads(out[2].read_text())["nfe"] == 2
