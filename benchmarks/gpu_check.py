"""One GPU check of the four papers' generators: the package's training step and sampler beside a bare loop.

For each paper (ViCTr, MedDiff-FT, MedSyn2, MAISI-v2) the generator is built through the package
(``medsynth.models.backbones.build_backbone`` with that paper's backbone type and sizes, random weights:
nothing is downloaded) and measured four ways on the same ``nn.Module``, side by side in one run:

* **train, ours**: the step the generator stages run: ``medsynth.generator.step.build_step`` (the
  paper's objective: ViCTr ``tweedie``, MedDiff-FT ``ddpm`` (Stable Diffusion's noise prediction),
  MedSyn2 ``flow`` on an x0-predicting DiT (x-prediction, v-loss), MAISI-v2 ``flow``; condition dropout
  0.1) inside the body of ``medsynth.train.loop.train``: the loop's accelerate ``Accelerator``
  (``mixed_precision`` bf16 or no), its data order and seeding, CPU batch -> device, gradient clipping
  at 1.0, AdamW with the cosine schedule, the loss terms read back every step (the loop's CSV and
  TensorBoard writing aside);
* **train, bare**: a plain diffusers-style loop on the same module: a batch indexed on the device,
  ``model(...)`` called directly, MSE, ``backward``, AdamW step, under ``torch.autocast``;
* **sample, ours**: ``medsynth.generator.integrate.integrate_latents`` (the ``sample`` rule's numerics:
  ``ConditionedField`` classifier-free guidance 2.0, the solvers of ``medsynth.sample``): ViCTr
  ``tweedie-2`` (few-step Tweedie), MedDiff-FT ``ddim-50``, MedSyn2 ``euler-10``, MAISI-v2 ``euler-30``
  (rectified flow); ``--sampler medsyn2=dopri5-auto`` and the like change them (MedDiff-FT's guiding-mask
  Euler, ``medsynth.sample.meddiff``, runs on flow models only, so its noise-prediction row samples with DDIM);
* **sample, bare**: a plain Euler loop (DDIM: diffusers' ``DDIMScheduler`` loop) with the same number of
  network evaluations and the same guidance, calling the model directly.

It prints images/s of ours and bare and their ratio (ours / bare: 1.00 = no overhead, 0.80 = the
package's step is 20 % slower), seconds per iteration and, on CUDA, peak memory; ``--json OUT`` writes
the rows (one per paper). bf16 autocast on CUDA (``--dtype bf16`` on the CPU; fp32 there by default);
warm-up iterations are not timed; CUDA is synchronised around every timing. ``--budget-s`` (default
420) bounds the whole run: each phase gets its share of what is left and stops adding iterations at
it (at least one timed iteration each). The package's own ``sample`` rule has no autocast setting (it
samples in float32); the sampler rows here run it under the same autocast as the bare loop.

Sizes (``--scale paper``, the default on CUDA): ViCTr a Stable Diffusion 1.5 UNet (320-640-1280-1280,
CLIP-L 768-wide text, 77 tokens) on 4 x 64 x 64 latents with 7 mask channels, batch 4 (ViCTr Sec. 8's
fine-tuning batch); MedDiff-FT the SD 1.5 inpainting UNet's shape (9 input channels = 4 latent + 5
masks), batch 4; MedSyn2's DiT (16 layers x 1152, 16 heads, patch 2, CXR-BERT 768-wide text of 32
pre-prompt + 512 report tokens) on (112, 56, 56) x 4 latents with the 4-channel mask latent (43,904
tokens, MedSyn2 Sec. 4), batch 1; MAISI-v2 the released rectified-flow UNet (NV-Generate-CT
``config_network_rflow.json``: 64-128-256-512, attention on the last two levels, spacing input, 128
classes) with its ControlNet (8 conditioning channels, 8-32-64) on 4 x 64^3 latents (the maisi_v2
study's 256^3 volumes) with 5 masks as MAISI label ids, batch 1. ``--scale tiny`` (the CPU test) has
the same four code paths on toy sizes.

Carrying it to a borrowed GPU machine (the device image's python3 is 3.12 with torch 2.11, and holds
numpy, pandas, safetensors, huggingface_hub 1.33, accelerate, peft, transformers, tokenizers, pyyaml,
torchdiffeq, scipy): what ``import medsynth...`` needs beyond torch here is numpy, pandas, safetensors,
diffusers (with huggingface_hub, filelock, regex, requests, Pillow), accelerate (the training loop),
peft and through it transformers and tokenizers (``medsynth.train`` imports its LoRA module eagerly),
monai (MAISI's networks) and torchdiffeq (dopri5 only); of these only **diffusers** (0.42.1; needs
huggingface_hub >= 1.32) and **monai** (1.6.1) are missing there: two pure-Python wheels, 7.6 MB together
(the working tree that travels is about 16 MB; the limit is 64 MiB). Checked by running the tiny check here
with only the image's distributions and these two importable::

    echo /.whl/ >> .git/info/exclude
    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 monai==1.6.1
    # on the device, carry .whl and run (one command, under 8 minutes):
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
        && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 \\
        && python3 benchmarks/gpu_check.py --device cuda --json $OUT/gpu_check.json

Usage: ``python benchmarks/gpu_check.py [--device auto|cpu|cuda] [--scale tiny|paper] [--dtype auto|bf16|fp32]
[--papers victr meddiff_ft medsyn2 maisi_v2] [--budget-s 420] [--iters 10] [--sample-iters 3] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing is fetched

PAPERS = ("victr", "meddiff_ft", "medsyn2", "maisi_v2")
SEED, LR, MAX_GRAD_NORM, COND_DROPOUT, GUIDANCE = 20261122, 1e-4, 1.0, 0.1, 2.0
ABSENT = -0.5  # the all-background mask value (medsynth.models.prompts.ABSENT_MASK_VALUE)
X0_T_MIN = 0.05  # MedSyn2's clamp of t in the velocity of an x-prediction (medsynth.objectives.x_prediction)
#: the study's DDPM schedule (config sampling.ddpm), the noise-prediction objective's and DDIM's
DDPM = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195}


@dataclass(frozen=True)
class Paper:
    """One paper's generator as this check builds it."""

    name: str
    backbone: dict  # build_backbone config
    latent: tuple[int, ...]  # (C, *spatial)
    masks: int  # condition channels on the latent grid
    text: tuple[int, int]  # (tokens, width)
    objective: str  # flow | tweedie | ddpm
    sampler: str  # <sampler>-<steps> | dopri5-auto
    train_batch: int
    sample_batch: int


def _sd15_unet(in_channels: int) -> dict:
    """Stable Diffusion 1.5's UNet (diffusers ``unet/config.json``) with ``in_channels`` inputs."""
    return {"sample_size": 64, "in_channels": in_channels, "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "norm_num_groups": 32,
            "cross_attention_dim": 768, "attention_head_dim": 8}


def _tiny_unet(in_channels: int) -> dict:
    return {"sample_size": 16, "in_channels": in_channels, "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "block_out_channels": [16, 32],
            "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": 8}


#: NV-Generate-CT configs/config_network_rflow.json, diffusion_unet_def (in/out = the 4 latent channels)
MAISI_UNET = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "num_channels": [64, 128, 256, 512],
              "attention_levels": [False, False, True, True], "num_head_channels": [0, 0, 32, 32],
              "num_res_blocks": 2, "use_flash_attention": True, "include_top_region_index_input": False,
              "include_bottom_region_index_input": False, "include_spacing_input": True, "num_class_embeds": 128,
              "resblock_updown": True, "include_fc": True}
MAISI_LABELS = [1, 20, 21, 2, 3]  # liver, lung, bone, kidney, spleen in MAISI's label_dict


def _maisi(unet: dict, controlnet: dict) -> dict:
    return {"type": "maisi_unet3d", "pretrained": None,
            "params": {"unet_params": unet, "controlnet_params": controlnet, "mask_input": "control",
                       "spacing_mm": [1.5, 1.5, 1.5], "class_label": 1, "control_label_ids": MAISI_LABELS}}


def _dit(**params) -> dict:
    base = {"spatial_dims": 3, "in_channels": 8, "out_channels": 4, "patch_size": 2, "gated_attention": True,
            "depthwise_conv": True, "prediction": "x0"}
    return {"type": "medsyn2_dit", "pretrained": None, "params": {**base, **params}}


def papers(scale: str, cuda: bool = True) -> dict[str, Paper]:
    """The four generators at ``scale`` (``paper``: the published sizes; ``tiny``: the CPU test's). MONAI builds
    MAISI's flash attention only where CUDA is available (``cuda``); elsewhere the same network without it."""
    if scale == "paper":
        return {
            "victr": Paper("victr", {"type": "unet2d_condition", "pretrained": None, "params": _sd15_unet(4 + 7)},
                           (4, 64, 64), 7, (77, 768), "tweedie", "tweedie-2", 4, 16),
            "meddiff_ft": Paper("meddiff_ft", {"type": "unet2d_condition", "pretrained": None,
                                               "params": _sd15_unet(4 + 5)},
                                (4, 64, 64), 5, (77, 768), "ddpm", "ddim-50", 4, 16),
            "medsyn2": Paper("medsyn2", _dit(hidden_size=1152, depth=16, num_heads=16, mlp_ratio=4.0,
                                             cross_attention_dim=768),
                             (4, 112, 56, 56), 4, (32 + 512, 768), "flow", "euler-10", 1, 1),
            "maisi_v2": Paper("maisi_v2", _maisi({**MAISI_UNET, "use_flash_attention": cuda},
                                                 {"conditioning_embedding_in_channels": 8,
                                                  "conditioning_embedding_num_channels": [8, 32, 64]}),
                              (4, 64, 64, 64), 5, (1, 8), "flow", "euler-30", 1, 1),
        }
    tiny_maisi = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "num_res_blocks": 1, "num_channels": [8, 16],
                  "attention_levels": [False, True], "norm_num_groups": 4, "num_head_channels": [0, 8],
                  "resblock_updown": True, "include_fc": True, "include_spacing_input": True, "num_class_embeds": 4}
    return {
        "victr": Paper("victr", {"type": "unet2d_condition", "pretrained": None, "params": _tiny_unet(4 + 2)},
                       (4, 16, 16), 2, (8, 32), "tweedie", "tweedie-2", 2, 2),
        "meddiff_ft": Paper("meddiff_ft", {"type": "unet2d_condition", "pretrained": None, "params": _tiny_unet(4 + 2)},
                            (4, 16, 16), 2, (8, 32), "ddpm", "ddim-3", 2, 2),
        "medsyn2": Paper("medsyn2", _dit(hidden_size=32, depth=1, num_heads=2, mlp_ratio=2.0, cross_attention_dim=32),
                         (4, 4, 4, 4), 4, (8, 32), "flow", "euler-2", 1, 1),
        "maisi_v2": Paper("maisi_v2", _maisi(tiny_maisi, {"conditioning_embedding_in_channels": 8,
                                                         "conditioning_embedding_num_channels": [8]}),
                          (4, 8, 8, 8), 5, (1, 8), "flow", "euler-3", 1, 1),
    }


# --------------------------------------------------------------------------------------------- timing


class Clock:
    """The run's budget: each phase gets an equal share of what is left when it starts."""

    def __init__(self, budget_s: float, phases: int, device: torch.device):
        self.start, self.budget, self.left, self.device = time.perf_counter(), budget_s, phases, device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def phase(self, step, warmup: int, iters: int) -> dict:
        """Run ``step(i)`` ``warmup`` times untimed, then up to ``iters`` times timed (at least once)."""
        remaining = self.budget - (time.perf_counter() - self.start)
        share = max(0.0, remaining) / max(1, self.left)
        self.left -= 1
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        tic = time.perf_counter()
        for i in range(warmup):
            step(i)
        self.sync()
        t0 = time.perf_counter()
        deadline = tic + share
        done = 0
        while done < iters:
            step(warmup + done)
            done += 1
            if time.perf_counter() >= deadline:
                break
        self.sync()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        return {"iters": done, "seconds": seconds, "s_per_iter": seconds / done, "peak_gib": peak}


# ----------------------------------------------------------------------------------------------- data


def latent_data(paper: Paper, n: int, seed: int):
    """A ``LatentData`` of ``n`` random latents, binary masks and 3 prompts (+ the null prompt)."""
    import pandas as pd

    from medsynth.generator.data import LatentData
    from medsynth.train.data import TensorDictDataset

    g = torch.Generator().manual_seed(seed)
    spatial = paper.latent[1:]
    latent = torch.randn((n, *paper.latent), generator=g)
    mask = (torch.rand((n, paper.masks, *spatial), generator=g) > 0.7).float() + ABSENT
    prompts = [f"prompt {i}" for i in range(3)]
    tokens = torch.randn((len(prompts) + 1, *paper.text), generator=g)
    keep = torch.ones((len(prompts) + 1, paper.text[0]), dtype=torch.bool)
    dataset = TensorDictDataset({"latent": latent, "mask": mask, "prompt": torch.arange(n) % len(prompts)})
    return LatentData(dataset, prompts, tokens, keep, pd.DataFrame(index=range(n)),
                      [f"mask{i}" for i in range(paper.masks)])


class Bare:
    """The bare loop's view of a model: its own forward call, the conditions on the device."""

    def __init__(self, model, paper: Paper, data, device: torch.device):
        self.model, self.kind = model, paper.backbone["type"]
        t = data.dataset.tensors
        self.latent = t["latent"].to(device)
        self.rows = {"mask": t["mask"].to(device), "text": data.tokens[t["prompt"]].to(device)}
        self.null = {"mask": torch.full_like(self.rows["mask"][:1], ABSENT),
                     "text": data.tokens[data.null_id:data.null_id + 1].to(device)}
        self.x0_model = self.kind == "medsyn2_dit" and model.config.prediction == "x0"
        if self.kind == "maisi_unet3d":  # MAISI's inputs beside x: the ControlNet's label bits, spacing, class
            from medsynth.models.backbones import adapter_for

            adapter, cfg = adapter_for(model), model.config
            self.rows["control"] = adapter.control_grid(model, self.rows["mask"], paper.latent[1:])
            self.null["control"] = adapter.control_grid(model, self.null["mask"], paper.latent[1:])
            self.spacing = torch.tensor(cfg.spacing_mm, device=device).mul(100)
            self.label = int(cfg.class_label)

    def cond(self, idx: torch.Tensor, null: bool = False) -> dict:
        c = {k: v[idx] for k, v in self.rows.items()}
        if null:  # classifier-free guidance: the conditions, then as many null conditions
            c = {k: torch.cat([v, self.null[k].expand_as(v)]) for k, v in c.items()}
        return c

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: dict) -> torch.Tensor:
        m = self.model
        if self.kind == "unet2d_condition":
            return m(torch.cat([x, c["mask"]], 1), t * 1000, encoder_hidden_states=c["text"]).sample
        if self.kind == "medsyn2_dit":
            return m(torch.cat([x, c["mask"]], 1), t, c["text"]).sample
        b = x.shape[0]
        return m(x, t * 1000, context=c["text"] if m.unet.with_conditioning else None, control=c["control"],
                 class_labels=torch.full((b,), self.label, dtype=torch.long, device=x.device),
                 spacing=self.spacing.expand(b, 3))


# ------------------------------------------------------------------------------------------- training


def train_bare(bare: Bare, paper: Paper, clock: Clock, autocast, args) -> dict:
    model, device, b = bare.model, bare.latent.device, paper.train_batch
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    abar = None
    if paper.objective == "ddpm":
        from diffusers import DDPMScheduler

        abar = DDPMScheduler(**DDPM).alphas_cumprod.to(device)
    losses = []

    def step(i: int) -> None:
        idx = torch.randint(len(bare.latent), (b,), device=device)
        x0, c = bare.latent[idx], bare.cond(idx)
        noise = torch.randn_like(x0)
        shape = (b,) + (1,) * (x0.ndim - 1)
        if abar is not None:
            k = torch.randint(0, DDPM["num_train_timesteps"], (b,), device=device)
            a = abar[k].view(shape)
            x_t, t, target = a.sqrt() * x0 + (1 - a).sqrt() * noise, k.float() / DDPM["num_train_timesteps"], noise
        else:
            t = torch.rand(b, device=device)
            x_t, target = (1 - t.view(shape)) * x0 + t.view(shape) * noise, (x0 if bare.x0_model else noise - x0)
        with autocast():
            loss = F.mse_loss(bare(x_t, t, c).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    out = clock.phase(step, args.warmup, args.iters)
    out["loss"] = float(losses[-1])
    del opt
    return out


def train_ours(model, paper: Paper, data, clock: Clock, mixed_precision: str, args) -> tuple[dict, torch.nn.Module]:
    """The generator stages' step (build_step) in the body of medsynth.train.loop.train."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from medsynth.generator.step import build_step
    from medsynth.train.loop import make_accelerator
    from medsynth.train.seeding import derive_seed, stream_indices

    loss_step = build_step(data, {"objective": paper.objective, "cond_dropout": COND_DROPOUT, "timesteps": "uniform"},
                           ddpm_cfg=DDPM)
    accelerator = make_accelerator(mixed_precision)
    model = accelerator.prepare(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, args.warmup + args.iters)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    n, b, device = len(data.dataset), paper.train_batch, accelerator.device
    losses = []

    def step(i: int) -> None:
        model.train()
        torch.manual_seed(derive_seed(SEED, "global", i, 0))
        batch = {k: v.to(device) for k, v in data.dataset.get_batch(stream_indices(n, SEED, i * b, b)).items()}
        gen = torch.Generator().manual_seed(derive_seed(SEED, "noise", i, 0, 0))
        with accelerator.autocast():
            terms = dict(loss_step(model, batch, i, gen))
        accelerator.backward(terms["loss"])
        float(accelerator.clip_grad_norm_(params, MAX_GRAD_NORM))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append({k: float(torch.as_tensor(v).detach().float()) for k, v in terms.items()}["loss"])

    out = clock.phase(step, args.warmup, args.iters)
    out["loss"] = losses[-1]
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # the plain module again (no autocast patch)
    accelerator.free_memory()
    return out, model


# ------------------------------------------------------------------------------------------- sampling


def sample_ours(model, paper: Paper, data, clock: Clock, autocast, args, run: str) -> dict:
    from medsynth.generator.integrate import SamplingSpec, integrate_latents, parse_run

    sampler, steps = parse_run(run)
    spec = SamplingSpec(sampler=sampler, steps=steps, guidance_scale=GUIDANCE, seed=SEED, batch_size=len(data.dataset),
                        shift=1.0, rtol=1e-3, atol=1e-3, max_num_steps=500, tweedie_mapping="variance", ddpm=dict(DDPM))
    model.eval()
    nfe = []

    def step(i: int) -> None:
        with autocast():
            nfe.append(integrate_latents(model, paper.objective, data, spec)[2])

    out = clock.phase(step, args.sample_warmup, args.sample_iters)
    out["nfe"] = int(nfe[-1])
    return out


def sample_bare(bare: Bare, paper: Paper, clock: Clock, autocast, args, run: str, nfe: int) -> dict:
    """Euler with guidance over ``nfe`` evaluations (``ddim-<n>``: diffusers' DDIM loop), the model called directly."""
    model, device = bare.model, bare.latent.device
    n = paper.sample_batch
    idx = torch.arange(n, device=device)
    c = bare.cond(idx, null=True)
    x1 = torch.randn((n, *paper.latent), generator=torch.Generator(device).manual_seed(SEED), device=device)
    model.eval()

    def guided(x: torch.Tensor, t: float) -> torch.Tensor:
        xx = torch.cat([x, x])
        out = bare(xx, torch.full((2 * n,), t, device=device), c).float()
        if bare.x0_model:
            out = (xx - out) / max(t, X0_T_MIN)
        cond, uncond = out.chunk(2)
        return uncond + GUIDANCE * (cond - uncond)

    def step(i: int) -> None:
        x = x1
        with torch.no_grad(), autocast():
            if run.startswith("ddim"):
                from diffusers import DDIMScheduler

                sched = DDIMScheduler(**DDPM, clip_sample=False, timestep_spacing="trailing")
                sched.set_timesteps(nfe, device=device)
                for k in sched.timesteps:
                    x = sched.step(guided(x, float(k) / DDPM["num_train_timesteps"]), k, x).prev_sample
            else:
                ts = torch.linspace(1.0, 0.0, nfe + 1).tolist()
                for t, t_next in zip(ts[:-1], ts[1:]):
                    x = x + (t_next - t) * guided(x, t)
        x.float().cpu()

    out = clock.phase(step, args.sample_warmup, args.sample_iters)
    out["nfe"] = nfe
    return out


# ------------------------------------------------------------------------------------------------ run


def measure(paper: Paper, model, clock: Clock, device: torch.device, bf16: bool, args, run: str) -> dict:
    autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    train_data = latent_data(paper, max(4, 2 * paper.train_batch), SEED)
    sample_data = latent_data(paper, paper.sample_batch, SEED + 1)
    model = model.to(device)
    row: dict = {}
    bare = Bare(model, paper, train_data, device)
    row["train"] = {"bare": train_bare(bare, paper, clock, autocast, args)}
    del bare
    _free(device)
    row["train"]["ours"], model = train_ours(model, paper, train_data, clock, "bf16" if bf16 else "no", args)
    model.zero_grad(set_to_none=True)
    _free(device)
    ours = sample_ours(model, paper, sample_data, clock, autocast, args, run)
    bare = Bare(model, paper, sample_data, device)
    row["sample"] = {"ours": ours, "bare": sample_bare(bare, paper, clock, autocast, args, run, ours["nfe"])}
    for phase, batch in (("train", paper.train_batch), ("sample", paper.sample_batch)):
        r = row[phase]
        r["batch"] = batch
        for who in ("ours", "bare"):
            r[who]["images_per_s"] = batch / r[who]["s_per_iter"]
        r["ratio"] = r["ours"]["images_per_s"] / r["bare"]["images_per_s"]
    return row


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def print_table(rows: list[dict]) -> None:
    print(f"{'paper':<11}{'phase':<8}{'what':<40}{'batch':>6}{'ours img/s':>12}{'bare img/s':>12}{'ratio':>7}"
          f"{'ours s/it':>11}{'bare s/it':>11}{'iters':>7}{'peak GiB o/b':>15}")
    for row in rows:
        if row.get("error"):
            print(f"{row['paper']:<11}error   {row['error']}")
            continue
        what = {"train": f"{row['backbone']} {row['params_m']:.4g}M {row['objective']}",
                "sample": f"{row['sampler']} ({row['sample']['ours']['nfe']} NFE, cfg {GUIDANCE})"}
        for phase in ("train", "sample"):
            r = row[phase]
            o, b = r["ours"], r["bare"]
            peak = f"{_fmt(o['peak_gib'], '.1f')}/{_fmt(b['peak_gib'], '.1f')}"
            print(f"{row['paper']:<11}{phase:<8}{what[phase][:39]:<40}{r['batch']:>6}{o['images_per_s']:>12.3f}"
                  f"{b['images_per_s']:>12.3f}{r['ratio']:>7.2f}{o['s_per_iter']:>11.4f}{b['s_per_iter']:>11.4f}"
                  f"{o['iters']:>3}/{b['iters']:<3}{peak:>15}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--scale", choices=("tiny", "paper"), default=None, help="default: paper on CUDA, tiny on CPU")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    parser.add_argument("--papers", nargs="+", choices=PAPERS, default=list(PAPERS))
    parser.add_argument("--sampler", action="append", default=[], metavar="PAPER=RUN",
                        help="another sampler for a paper, e.g. medsyn2=dopri5-auto (repeatable)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="whole run, imports and model building included")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per loop")
    parser.add_argument("--iters", type=int, default=10, help="most timed training steps per loop")
    parser.add_argument("--sample-warmup", type=int, default=1, help="untimed sampling calls per sampler")
    parser.add_argument("--sample-iters", type=int, default=3, help="most timed sampling calls per sampler")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if min(args.iters, args.sample_iters) < 1 or min(args.warmup, args.sample_warmup) < 0:
        parser.error("--iters / --sample-iters must be >= 1 and the warm-ups >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the loop's Accelerator stays on the CPU too
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = args.scale or ("paper" if device.type == "cuda" else "tiny")
    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    specs = papers(scale, cuda=device.type == "cuda")
    for item in args.sampler:
        name, _, run = item.partition("=")
        if name not in specs or not run:
            parser.error(f"--sampler {item!r}: expected PAPER=RUN with PAPER one of {', '.join(PAPERS)}")
        specs[name] = replace(specs[name], sampler=run)
    clock = Clock(args.budget_s, 4 * len(args.papers), device)

    try:
        from medsynth.generator.integrate import parse_run
        from medsynth.models.backbones import build_backbone
    except ImportError as exc:
        print(f"gpu_check: cannot import the package ({type(exc).__name__}: {exc}); carry the missing package as a "
              "wheel (see this script's docstring)", file=sys.stderr)
        return 2

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)"
    print(f"gpu_check: {device.type} ({name}), torch {torch.__version__}, {'bf16 autocast' if bf16 else 'fp32'}, "
          f"scale {scale}, random weights (nothing downloaded), budget {args.budget_s:.0f} s")
    rows, failures = [], []
    for key in args.papers:
        paper = specs[key]
        row = {"paper": key, "backbone": paper.backbone["type"], "latent": list(paper.latent), "masks": paper.masks,
               "text": list(paper.text), "objective": paper.objective, "sampler": paper.sampler}
        try:
            parse_run(paper.sampler)
            torch.manual_seed(SEED)
            with torch.device(device):  # initialised where it runs (CPU initialisation of 0.9B parameters is slow)
                model = build_backbone(paper.backbone, key=f"{key}.backbone")
        except Exception as exc:  # noqa: BLE001 - reported and the run goes on with the other papers
            msg = f"cannot build {key}'s generator ({paper.backbone['type']}): {type(exc).__name__}: {exc}"
            print(f"gpu_check: {msg}", file=sys.stderr)
            failures.append(msg)
            clock.left -= 4
            rows.append({**row, "error": msg})
            continue
        row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        phases_left = clock.left - 4
        try:
            row.update(measure(paper, model, clock, device, bf16, args, paper.sampler))
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the row says so
            msg = f"{key} failed while measuring: {type(exc).__name__}: {exc}"
            print(f"gpu_check: {msg}", file=sys.stderr)
            failures.append(msg)
            row["error"] = msg
            clock.left = phases_left
        rows.append(row)
        del model
        _free(device)
    elapsed = time.perf_counter() - clock.start
    print_table(rows)
    print(f"ratio = ours / bare images/s (1.00: no overhead; below 1: the package's step or sampler costs more); "
          f"{elapsed:.0f} s in all")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": device.type, "device_name": name, "torch": torch.__version__, "dtype": "bf16" if bf16 else "fp32",
            "scale": scale, "weights": "random (nothing downloaded)", "guidance": GUIDANCE, "budget_s": args.budget_s,
            "elapsed_s": elapsed, "rows": rows, "failures": failures}, indent=2) + "\n")
    if any(m.startswith("cannot build") for m in failures):
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
