"""Stable Diffusion inpainting's own inputs (generator.inpainting_inputs, MedDiff-FT): the context by hand,
where it enters the backbone, that neither dropout nor guidance touches it, and a base + sampling run with it
on tiny shards cut from the shipped CT (conftest.ct_slice_shard)."""

from __future__ import annotations

import copy
import json
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medsynth.generator.inpainting import inpainting_context, inpainting_region, lesion_free_hosts, masked_images
from medsynth.models.prompts import ABSENT_MASK_VALUE
from tiny_backbones import TINY_CONFIGS

from conftest import ct_slice_shard

NAMES = ["liver", "lungs", "bone", "kidneys", "spleen"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PoolVAE(torch.nn.Module):
    """A stand-in VAE: the latent is the 2 x 2 average of the image (one channel)."""

    def encode(self, x):
        mean = F.avg_pool2d(x, 2)
        return mean, torch.zeros_like(mean)


def test_region_and_masked_image_by_hand():
    masks = np.full((1, 2, 2, 2), -0.5, np.float32)
    masks[0, 0, 0, 0] = 0.5  # channel a: top-left pixel
    masks[0, 1, 1, 1] = 0.5  # channel b: bottom-right pixel
    assert inpainting_region(masks, ["a", "b"], None)[0, 0].tolist() == [[True, False], [False, True]]
    assert inpainting_region(masks, ["a", "b"], ["b"])[0, 0].tolist() == [[False, False], [False, True]]
    images = np.array([[[[0.5, -1.0], [0.25, 1.0]]]], np.float32)
    assert masked_images(images, inpainting_region(masks, ["a", "b"], ["b"]))[0, 0].tolist() == [[0.5, -1.0],
                                                                                                 [0.25, 0.0]]
    with pytest.raises(KeyError, match="not condition channels"):
        inpainting_region(masks, ["a", "b"], ["tumour"])


def test_context_is_the_nearest_mask_and_the_normalised_masked_latent_by_hand():
    images = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 16.0  # 0 ... 0.9375
    masks = np.full((1, 1, 4, 4), -0.5, np.float32)
    masks[0, 0, 0, 0] = 0.5  # seen by nearest 4 -> 2 resizing (it reads pixels 0 and 2 of each axis)
    masks[0, 0, 3, 3] = 0.5  # not seen by it
    stats = {"mean": [0.25], "std": [2.0]}
    context = inpainting_context(PoolVAE(), stats, images, masks, ["lesion"], batch_size=1)
    assert context.shape == (1, 2, 2, 2)
    assert context[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    x = images[0, 0].copy()
    x[0, 0] = x[3, 3] = 0.0  # the region set to 0
    pooled = x.reshape(2, 2, 2, 2).mean(axis=(1, 3))
    assert np.allclose(context[0, 1].numpy(), (pooled - 0.25) / 2.0, atol=1e-6)


def test_lesion_free_hosts_are_the_empty_slices_in_a_seeded_order_used_in_turn():
    masks = np.full((5, 2, 2, 2), -0.5, np.float32)
    masks[1, 0, 0, 0] = masks[3, 0, 1, 1] = 0.5  # rows 1 and 3 have a lesion in channel a
    masks[4, 1, 0, 0] = 0.5  # row 4 only in channel b
    hosts = lesion_free_hosts(masks, ["a", "b"], ["a"], 7, seed=3)
    assert sorted(set(hosts.tolist())) == [0, 2, 4] and len(hosts) == 7
    assert hosts[:3].tolist() == hosts[3:6].tolist() and hosts[6] == hosts[0]  # in turn, one order
    assert np.array_equal(hosts, lesion_free_hosts(masks, ["a", "b"], ["a"], 7, seed=3))
    assert sorted(set(lesion_free_hosts(masks, ["a", "b"], None, 4, seed=3).tolist())) == [0, 2]
    with pytest.raises(ValueError, match="no lesion-free host"):
        lesion_free_hosts(masks[[1, 3]], ["a", "b"], ["a"], 2, seed=0)


def _unet(in_channels: int):
    from medsynth.models.backbones import build_backbone

    cfg = copy.deepcopy(TINY_CONFIGS["unet2d_condition"])
    cfg["params"] = {**cfg["params"], "in_channels": in_channels, "sample_size": 8}
    torch.manual_seed(0)
    return build_backbone(cfg)


def _inputs(model) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


def test_predict_feeds_latent_then_context_then_masks():
    from medsynth.models.backbones import predict

    model = _unet(4 + 5 + 2)
    seen = _inputs(model)
    x, context, mask = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8), torch.randn(2, 2, 8, 8)
    tokens = torch.randn(2, 3, TINY_CONFIGS["unet2d_condition"]["params"]["cross_attention_dim"])
    predict(model, x, torch.full((2,), 0.5), tokens, mask=mask, context=context)
    assert torch.equal(seen[0], torch.cat([x, context, mask], dim=1))
    with pytest.raises(ValueError, match=r"expects 11 input channels \(latent \+ mask\), got 6"):
        predict(model, x, 0.5, tokens, mask=mask)  # the context left out
    with pytest.raises(ValueError, match=r"\(latent \+ inpainting context \+ mask\), got 10"):
        predict(model, x, 0.5, tokens, mask=mask[:, :1], context=context)


def test_guidance_keeps_the_context_in_the_null_half():
    from medsynth.generator.field import ConditionedField

    model = _unet(4 + 5 + 2)
    seen = _inputs(model)
    dim = TINY_CONFIGS["unet2d_condition"]["params"]["cross_attention_dim"]
    context, mask = torch.randn(2, 5, 8, 8), torch.full((2, 2, 8, 8), 0.5)
    field = ConditionedField(model, mask, torch.randn(2, 3, dim), torch.ones(2, 3, dtype=torch.bool),
                             torch.zeros(1, 3, dim), torch.ones(1, 3, dtype=torch.bool), 2.0, context=context)
    field(torch.randn(2, 4, 8, 8), torch.full((2,), 0.5))
    x = seen[0]
    assert torch.equal(x[:2, 4:9], context) and torch.equal(x[2:, 4:9], context)
    assert torch.equal(x[:2, 9:], mask) and bool((x[2:, 9:] == ABSENT_MASK_VALUE).all())


def test_condition_dropout_replaces_the_masks_not_the_context():
    from medsynth.generator.step import GeneratorStep

    seen = {}

    def spy(model, x, t, text, keep, **kwargs):
        seen.update(kwargs)
        return torch.zeros_like(x)

    step = GeneratorStep(torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool), 1, cond_dropout=1.0)
    batch = {"latent": torch.randn(3, 4, 8, 8), "mask": torch.full((3, 2, 8, 8), 0.5),
             "context": torch.randn(3, 5, 8, 8), "prompt": torch.zeros(3, dtype=torch.long)}
    with mock.patch("medsynth.generator.objective.predict", spy):
        step(torch.nn.Identity(), batch, 0, torch.Generator().manual_seed(0))
    assert bool((seen["mask"] == ABSENT_MASK_VALUE).all()) and torch.equal(seen["context"], batch["context"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return ct_slice_shard(tmp_path_factory.mktemp("shards"), NAMES)


def test_base_training_and_stochastic_sampling_with_inpainting_inputs(shards, text_encoder, tmp_path):
    from medsynth.generator import run_base
    from medsynth.generator.loaders import load_latent_data
    from medsynth.generator.sampling import sample_condition_set
    from medsynth.io.generated import load_generated
    from medsynth.vae import TINY_VAE_CONFIGS
    from medsynth.vae.stage import run_vae

    vae_cfg = {"model": dict(TINY_VAE_CONFIGS["2d"]), "steps": 2, "batch_size": 4, "lr": 1e-4, "checkpoint_every": 0,
               "progress": False, "seed": 1, "stats_batch_size": 8}
    run_vae(shards, tmp_path / "vae", vae_cfg)
    vae, stats = tmp_path / "vae" / "final", tmp_path / "vae" / "latent_stats.json"
    gen = {"backbone": copy.deepcopy(TINY_CONFIGS["unet2d_condition"]), "text_encoder": {"type": "minilm"},
           "max_length": 16, "threads": 1, "inpainting_inputs": {"enabled": True, "channels": ["liver"]}}
    gen["backbone"]["params"] = {**gen["backbone"]["params"], "in_channels": 4 + 1 + 4 + 5, "sample_size": 8}
    base = {"steps": 2, "batch_size": 4, "lr": 0.01, "checkpoint_every": 0, "progress": False, "seed": 3,
            "cond_dropout": 0.25, "warmup_steps": 0, "select": {"split": ["train"]}}
    data = load_latent_data(shards, vae, stats, gen, {**base, "severity_prompt": False}, text_encoder)
    context = data.dataset.tensors["context"]
    assert context.shape == (len(data.index), 5, 8, 8)
    liver = data.dataset.tensors["mask"][:, :1]
    # the inpainting mask is the liver's, binary on the latent grid; where it is 1 the area-resized mask is > -0.5
    assert set(context[:, 0].unique().tolist()) <= {0.0, 1.0} and 0 < float(context[:, 0].mean()) < 1
    assert bool((liver[context[:, :1] > 0.5] > ABSENT_MASK_VALUE).all())
    run_base(shards, vae, stats, tmp_path / "base", gen, base, text_encoder=text_encoder)
    with pytest.raises(ValueError, match="inpainting mask"):  # a backbone without the context's channels
        bad = copy.deepcopy(gen)
        bad["backbone"]["params"]["in_channels"] = 9
        run_base(shards, vae, stats, tmp_path / "bad", bad, base, text_encoder=text_encoder)
    out = [tmp_path / f"s.{ext}" for ext in ("safetensors", "csv", "json")]
    select = {"split": ["train"], "modality": ["CT"], "stochastic_masks": {"seed": 3, "p_perturb": 1.0}}
    sample_condition_set(shards, vae, stats, tmp_path / "base" / "final", None, *out, gen,
                         {**base, "severity_prompt": False, "objective": "flow"}, {"guidance_scale": 2.0, "seed": 5},
                         "euler-2", select, text_encoder=text_encoder)
    images, masks, _ = load_generated(out[0])
    assert np.isfinite(images).all() and images.shape[0] == masks.shape[0] > 0
    # MedDiff-FT's inference: the new masks drawn into slices without a kidney (the inpainting channel here)
    gen_k = {**gen, "inpainting_inputs": {"enabled": True, "channels": ["kidneys"]}}
    select_k = {**select, "stochastic_masks": {**select["stochastic_masks"], "hosts": "lesion_free"}}
    sample_condition_set(shards, vae, stats, tmp_path / "base" / "final", None, *out, gen_k,
                         {**base, "severity_prompt": False, "objective": "flow"}, {"guidance_scale": 2.0, "seed": 5},
                         "euler-2", select_k, text_encoder=text_encoder)
    index = pd.read_csv(out[1])
    real = load_latent_data(shards, vae, stats, gen_k, {**base, "severity_prompt": False,
                                                         "select": {"split": ["train"], "modality": ["CT"]}},
                            text_encoder).index
    free = {(r.case_id, r.slice) for r in real.itertuples() if "kidneys" not in json.loads(r.organs)}
    assert free and {(r.host_case, r.host_slice) for r in index.itertuples()} <= free
    with pytest.raises(ValueError, match="needs generator.inpainting_inputs"):
        sample_condition_set(shards, vae, stats, tmp_path / "base" / "final", None, *out,
                             {**gen, "inpainting_inputs": {"enabled": False}},
                             {**base, "severity_prompt": False, "objective": "flow"}, {"seed": 5}, "euler-2",
                             select_k, text_encoder=text_encoder)
    with pytest.raises(ValueError, match="inpainting inputs"):
        sample_condition_set(shards, vae, stats, tmp_path / "base" / "final", None, *out, gen,
                             {**base, "severity_prompt": False, "objective": "flow"}, {"seed": 5}, "euler-2",
                             {"split": ["train"], "edit": {"strength": 0.5, "add_channels": ["spleen"]}},
                             text_encoder=text_encoder)
