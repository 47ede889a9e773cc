"""Integrating a trained generator's field over a set of conditions, and decoding the result.

The numerics of :mod:`medsynth.generator.sampling` (see its docstring for the fields, the guidance and
the guiding mask): :class:`SamplingSpec` (one sampler setting), :func:`integrate_latents` (latents of
every condition, batch by batch, resumable through a :class:`medsynth.sample.batches.BatchStore`) and
:func:`generate` (the same, decoded by the VAE). Shared by sampling, reflow, distillation and
MAISI's HU quality check; it imports none of them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsynth.generator.data import LatentData
from medsynth.generator.field import ConditionedField
from medsynth.models.backbones import build_backbone
from medsynth.models.prompts import ABSENT_MASK_VALUE
from medsynth.names import DIFFUSION_SAMPLERS, FLOW_SAMPLERS
from medsynth.sample.batches import BatchStore
from medsynth.train.signals import SignalFlag
from medsynth.vae.models import model_device

__all__ = [
    "FLOW_SAMPLERS",
    "DIFFUSION_SAMPLERS",
    "SPEC_KEYS",
    "SamplingSpec",
    "GeneratedSet",
    "SamplingPreempted",
    "parse_run",
    "load_trained_generator",
    "inpaint_keep_mask",
    "integrate_latents",
    "solve_batch",
    "generate",
    "decode_latents",
    "write_summary",
]

log = logging.getLogger(__name__)




def parse_run(run: str) -> tuple[str, int | None]:
    """``"euler-30"`` -> ``("euler", 30)``; ``"dopri5-auto"`` -> ``("dopri5", None)`` (adaptive);
    ``"dopri5-50"`` -> ``("dopri5", 50)`` (50 equal Dormand-Prince steps, :func:`medsynth.sample.dopri5_fixed`)."""
    sampler, _, steps = str(run).partition("-")
    if sampler not in FLOW_SAMPLERS + DIFFUSION_SAMPLERS:
        raise ValueError(f"sampling run {run!r}: sampler must be one of {FLOW_SAMPLERS + DIFFUSION_SAMPLERS}")
    if steps == "auto":
        if sampler != "dopri5":
            raise ValueError(f"sampling run {run!r}: only dopri5 chooses its steps ('auto')")
        return sampler, None
    if not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"sampling run {run!r}: expected <sampler>-<steps> with steps >= 1 (e.g. euler-30, "
                         "dopri5-50) or dopri5-auto")
    return sampler, int(steps)


#: the keys of config ``sampling`` a :class:`SamplingSpec` takes
SPEC_KEYS = ("guidance_scale", "seed", "batch_size", "shift", "dopri5", "tweedie_mapping", "ddpm")


@dataclass
class SamplingSpec:
    """How to sample: solver, steps, guidance and the numerics of each solver (config ``sampling``;
    build it with :meth:`from_config`, which takes the schema's defaults)."""

    sampler: str
    steps: int | None
    guidance_scale: float
    seed: int
    batch_size: int
    shift: float
    rtol: float
    atol: float
    max_num_steps: int
    tweedie_mapping: str
    ddpm: dict
    #: MedDiff-FT guiding mask (module docstring): a condition set's complete ``inpaint`` options; {} = off
    inpaint: dict = field(default_factory=dict)
    #: SDEdit (:mod:`medsynth.sample.edit`): ``{"strength": s}`` re-noises each condition's own latent to
    #: ``t = s`` and integrates from there (ViCTr Fig. 3 counterfactuals, MedSyn2 Fig. 5 stages); {} = off
    edit: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, sampling_cfg: Mapping, run: str) -> "SamplingSpec":
        """Spec of run ``<sampler>-<steps>`` with the solver options of config ``sampling`` (:data:`SPEC_KEYS`;
        other keys are ignored, so a section holding some of them works too, e.g. ``stage2.reflow``); the keys
        it lacks take the schema's ``sampling`` defaults."""
        from medsynth.settings import section

        sampler, steps = parse_run(run)
        cfg = section("sampling", {k: v for k, v in dict(sampling_cfg).items() if k in SPEC_KEYS})
        dopri = cfg["dopri5"]
        return cls(sampler=sampler, steps=steps, guidance_scale=float(cfg["guidance_scale"]), seed=int(cfg["seed"]),
                   batch_size=int(cfg["batch_size"]), shift=float(cfg["shift"]), rtol=float(dopri["rtol"]),
                   atol=float(dopri["atol"]), max_num_steps=int(dopri["max_num_steps"]),
                   tweedie_mapping=str(cfg["tweedie_mapping"]), ddpm=dict(cfg["ddpm"]))


@dataclass
class GeneratedSet:
    """Decoded synthetic slices / volumes ``(N, 1, *spatial)`` in [-1, 1] and the cost of making them."""

    images: np.ndarray
    nfe: int
    network_evals: int
    seconds: float
    spec: SamplingSpec

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / max(1, len(self.images))

    def summary(self) -> dict:
        return {"n": int(len(self.images)), "sampler": self.spec.sampler, "steps": self.spec.steps,
                "nfe": int(self.nfe), "network_evals": int(self.network_evals), "seconds": float(self.seconds),
                "seconds_per_sample": float(self.seconds_per_sample), "spec": asdict(self.spec)}


def load_trained_generator(gen_cfg: Mapping, model_dir: str | Path, init_dir: str | Path | None = None) -> nn.Module:
    """A trained generator in eval mode: a saved backbone, or a LoRA adapter merged into the stage-1 model."""
    from medsynth.train.lora import load_lora, merge_lora

    model_dir = Path(model_dir)
    cfg = {**dict(gen_cfg["backbone"]), "local_files_only": True}
    cfg.pop("subfolder", None)
    if (model_dir / "adapter_config.json").exists():
        if init_dir is None:
            raise ValueError(f"{model_dir} holds a LoRA adapter: the stage-1 model it adapts is needed")
        model = build_backbone({**cfg, "pretrained": str(init_dir)}, key="generator.backbone")
        model = load_lora(model, model_dir)
        if _pointwise_conv3d_adapters(model):
            # peft's merge treats a 1x1x1 Conv3d as a 1x1 Conv2d and fails: keep those adapters unmerged
            log.info("%s: LoRA on 1x1x1 Conv3d layers kept as adapters (not merged)", model_dir)
        else:
            model = merge_lora(model)
    else:
        model = build_backbone({**cfg, "pretrained": str(model_dir)}, key="generator.backbone")
    return model.eval().requires_grad_(False)


def _pointwise_conv3d_adapters(model: nn.Module) -> bool:
    """Whether a LoRA adapter wraps a Conv3d with a 1x1x1 kernel (peft's merge cannot fold those)."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) and isinstance(m.get_base_layer(), nn.Conv3d)
               and tuple(m.get_base_layer().kernel_size) == (1, 1, 1) for m in model.modules())


def solve_batch(field_fn: ConditionedField, x1: torch.Tensor, spec: SamplingSpec, objective: str,
                 generator: torch.Generator):
    from medsynth import sample

    if spec.sampler in DIFFUSION_SAMPLERS:
        if objective != "ddpm":
            raise ValueError(f"sampler {spec.sampler!r} needs a noise-prediction (ddpm) model; this one is {objective!r}")
        train_steps = int(spec.ddpm["num_train_timesteps"])
        calls = {"n": 0}

        def eps_fn(x, timesteps):
            calls["n"] += 1
            return field_fn.raw(x, timesteps.to(x.dtype).reshape(-1).expand(x.shape[0]) / train_steps)

        start = time.perf_counter()
        x0 = sample.diffusion_sample(eps_fn, x1, spec.sampler, int(spec.steps), generator=generator,
                                     **{k: v for k, v in spec.ddpm.items()})
        return x0, calls["n"], time.perf_counter() - start
    if objective == "ddpm":
        raise ValueError(f"a ddpm (noise-prediction) model samples with ddpm or ddim, not {spec.sampler!r}")
    result = sample.solve(spec.sampler, field_fn, x1, spec.steps, **_solver_options(spec))
    return result.x0, result.nfe, result.seconds


def _solver_options(spec: SamplingSpec) -> dict:
    """:func:`medsynth.sample.solve`'s options of a flow sampler: the shift (and the Tweedie mapping),
    dopri5-auto's tolerances and step cap, none for dopri5-<N> (equal steps)."""
    if spec.sampler == "dopri5":
        return {} if spec.steps is not None else {"rtol": spec.rtol, "atol": spec.atol,
                                                  "max_num_steps": spec.max_num_steps}
    options: dict = {"shift": spec.shift}
    if spec.sampler == "tweedie":
        options["mapping"] = spec.tweedie_mapping
    return options


def inpaint_keep_mask(mask: torch.Tensor, names: list[str], channels, dilate: int) -> torch.Tensor:
    """``(N, 1, *latent_spatial)`` 1 where the real latent is kept: outside the (dilated) union of ``channels``.

    ``mask``: the conditions at latent resolution in [-0.5, 0.5] (area-resized); a latent pixel any
    part of which the channel covers belongs to the ROI. ``channels`` None = every channel.
    """
    chosen = list(names) if channels is None else list(channels)
    missing = [c for c in chosen if c not in names]
    if missing:
        raise KeyError(f"inpaint.channels {missing} are not condition channels ({list(names)})")
    idx = [list(names).index(c) for c in chosen]
    roi = (mask[:, idx] > ABSENT_MASK_VALUE + 1e-6).any(dim=1, keepdim=True).float()
    if dilate > 0:
        pool = torch.nn.functional.max_pool3d if roi.ndim == 5 else torch.nn.functional.max_pool2d
        roi = pool(roi, 2 * int(dilate) + 1, stride=1, padding=int(dilate))
    return 1.0 - roi


class SamplingPreempted(RuntimeError):
    """A preemption signal arrived during sampling; the finished batches are kept for the rerun."""


@torch.no_grad()
def integrate_latents(model: nn.Module, objective: str, data: LatentData, spec: SamplingSpec, *,
                      store: BatchStore | None = None, stop: SignalFlag | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Sample the (z-normalised) latents of every condition of ``data``: ``(x0, noise, nfe, seconds)``.

    ``noise`` is the ``x1`` each ``x0`` was integrated from (drawn once from ``spec.seed``), so the
    pairs are the couplings 2-rectified flow (reflow) trains on. With ``spec.edit`` the latents of ``data`` are
    the edit's sources: each is re-noised with its ``noise`` row to ``t = strength`` (SDEdit). The batches run on the model's device
    (results on the CPU). ``store``: finished batches are taken from it and new ones kept in it
    (:class:`medsynth.sample.batches.BatchStore`); ``stop``: when its signal has arrived after a batch,
    :class:`SamplingPreempted` is raised.
    """
    if objective not in ("flow", "tweedie", "ddpm"):
        raise ValueError(f"objective must be flow, tweedie or ddpm, got {objective!r}")
    latent = data.dataset.tensors["latent"]
    masks = data.dataset.tensors["mask"]
    gen = torch.Generator().manual_seed(spec.seed)
    noise = torch.randn(latent.shape, generator=gen)
    null_tokens, null_keep = data.tokens[data.null_id:data.null_id + 1], data.keep[data.null_id:data.null_id + 1]
    corrected_field = objective == "tweedie" and spec.sampler != "tweedie"
    inpaint = spec.inpaint or None  # complete options (the condition set's, schema defaults filled in)
    keep = None
    if spec.edit and (spec.sampler != "euler" or objective == "ddpm" or inpaint):
        raise ValueError(f"an edit (SDEdit: counterfactual / progressive condition set) samples with euler-<steps> "
                         f"on a flow model and without inpaint, not {spec.sampler!r}")
    if inpaint:
        if spec.sampler != "euler" or objective == "ddpm":
            raise ValueError(f"the guiding mask (inpaint) samples with euler-<steps> on a flow model, not {spec.sampler!r}")
        keep = inpaint_keep_mask(masks, list(data.names), inpaint["channels"], int(inpaint["dilate"]))
    device = model_device(model)
    null_tokens, null_keep = null_tokens.to(device), null_keep.to(device)
    pooled = None if data.pooled is None else data.pooled.to(device)
    out, nfe, seconds = [], 0, 0.0
    for start in range(0, len(latent), spec.batch_size):
        sl = slice(start, start + spec.batch_size)
        done = store.load(start) if store is not None else None
        if done is not None:
            x0, batch_nfe, batch_seconds = done
            log.info("batch at row %d: taken from %s", start, store.folder)
        else:
            x0, batch_nfe, batch_seconds = _sample_batch(model, objective, data, spec, sl, noise, keep, inpaint,
                                                         null_tokens, null_keep, corrected_field, device, pooled)
            if store is not None:
                store.save(start, x0, batch_nfe, batch_seconds)
        out.append(x0.float().cpu())
        seconds += batch_seconds
        nfe = max(nfe, int(batch_nfe))
        log.info("sampled %d/%d (%s, %s steps, %d NFE)", min(start + spec.batch_size, len(latent)), len(latent),
                 spec.sampler, spec.steps, batch_nfe)
        if stop is not None and stop.received is not None and start + spec.batch_size < len(latent):
            raise SamplingPreempted(f"signal {stop.received} after {min(start + spec.batch_size, len(latent))} of "
                                    f"{len(latent)} samples")
    return torch.cat(out), noise, nfe, seconds


def _sample_batch(model: nn.Module, objective: str, data: LatentData, spec: SamplingSpec, sl: slice,
                  noise: torch.Tensor, keep: torch.Tensor | None, inpaint: dict | None, null_tokens: torch.Tensor,
                  null_keep: torch.Tensor, corrected_field: bool, device: torch.device,
                  pooled: torch.Tensor | None = None) -> tuple[torch.Tensor, int, float]:
    """One batch of :func:`integrate_latents` on ``device``: ``(x0, nfe, seconds)``; ``pooled``: the prompt
    table's pooled vectors on ``device`` (SDXL / SD3 / Flux)."""
    tensors = data.dataset.tensors
    pid = tensors["prompt"][sl]
    field_fn = ConditionedField(model, tensors["mask"][sl].to(device), data.tokens[pid].to(device),
                                 data.keep[pid].to(device), null_tokens, null_keep, spec.guidance_scale,
                                 corrected_field, spec.tweedie_mapping,
                                 None if pooled is None else pooled[pid.to(device)],
                                 None if pooled is None else pooled[data.null_id:data.null_id + 1],
                                 tensors["context"][sl].to(device) if "context" in tensors else None)
    gen = torch.Generator().manual_seed(spec.seed + 1 + sl.start)
    x1 = noise[sl].to(device)
    if keep is not None:
        from medsynth.sample.meddiff import guided_inpaint_euler

        tic = time.perf_counter()
        x0 = guided_inpaint_euler(field_fn, x1, tensors["latent"][sl].to(device), keep[sl].to(device),
                                  int(spec.steps), spec.shift, gen if inpaint["renoise"] else None,
                                  schedule=inpaint["schedule"], max_dilate=int(inpaint["max_dilate"]))
        return x0, int(spec.steps), time.perf_counter() - tic
    if spec.edit:
        from medsynth.sample.edit import sdedit_euler

        tic = time.perf_counter()
        x0, nfe = sdedit_euler(field_fn, tensors["latent"][sl].to(device), x1, float(spec.edit["strength"]),
                               int(spec.steps), spec.shift)
        return x0, nfe, time.perf_counter() - tic
    return solve_batch(field_fn, x1, spec, objective, gen)


@torch.no_grad()
def generate(model: nn.Module, objective: str, data: LatentData, vae: nn.Module, stats: dict,
             spec: SamplingSpec, *, store: BatchStore | None = None, stop: SignalFlag | None = None) -> GeneratedSet:
    """Sample one image per condition of ``data`` (module docstring) and decode it with ``vae``.

    ``store`` / ``stop``: see :func:`integrate_latents`.
    """
    latents, _, nfe, seconds = integrate_latents(model, objective, data, spec, store=store, stop=stop)
    images, decode_seconds = decode_latents(latents, vae, stats, spec.batch_size)
    evals = nfe * (2 if spec.guidance_scale != 1.0 else 1)
    return GeneratedSet(images, nfe, evals, seconds + decode_seconds, spec)


@torch.no_grad()
def decode_latents(latents: torch.Tensor, vae: nn.Module, stats: dict, batch_size: int) -> tuple[np.ndarray, float]:
    """Z-normalised latents decoded by ``vae`` into ``(N, 1, *spatial)`` float32 in [-1, 1], and the seconds."""
    from medsynth.vae.latents import denormalise_latents
    from medsynth.vae.models import decode

    images, device, seconds = [], model_device(vae), 0.0
    for start in range(0, len(latents), batch_size):
        tic = time.perf_counter()
        z = denormalise_latents(latents[start:start + batch_size].to(device), stats)
        decoded = decode(vae, z).clamp(-1.0, 1.0).cpu()
        seconds += time.perf_counter() - tic
        images.append(decoded.numpy().astype(np.float32))
    return np.concatenate(images), seconds


def write_summary(generated: GeneratedSet, path: str | Path, **extra) -> None:
    """The run's cost and settings as JSON (``n``, ``nfe``, ``network_evals``, ``seconds``...)."""
    from medsynth.fsutil import write_text_atomic

    write_text_atomic(path, json.dumps({**generated.summary(), **extra}, indent=2, sort_keys=True) + "\n")
