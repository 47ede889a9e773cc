"""Sampling from a trained generator: conditions of real slices (or volumes) in, decoded synthetic ones out.

Everything here works on ``(N, C, *spatial)``: 2D slices with a 2D backbone and VAE, or 3D volumes
(MAISI-v2 / MedSyn2 3D studies: ``trainsets/volumes`` shards, the 3D MAISI VAE, ``maisi_unet3d`` or the
3D ``medsyn2_dit``) with the same functions and the same three output files. An x0-predicting
backbone (MedSyn2) is integrated through its implied velocity
(:func:`medsynth.models.backbones.predict_velocity`). MAISI's HU quality check works per organ on
either.

A *sampling run* is one trained model (``base``, ``stage1`` or a stage-2 variant) x one sampler
setting (``euler``, ``heun``, ``dopri5``, ``tweedie``, ``ddpm``, ``ddim`` with a step count) x one
*condition set* (the masks and compound prompts of the real slices that a config ``select`` keeps:
``eval`` = the held-out test slices the metrics compare against, ``train`` = the real training slices
whose masks label the synthetic images of the downstream segmentation).

For every condition (mask + prompt) one noise draw ``x1 ~ N(0, I)`` in latent space is integrated
from ``t = 1`` to ``t = 0`` by :func:`medsynth.sample.solve` and decoded by the study's VAE (after
undoing the z-normalisation). Noise is drawn once for the whole set from ``seed``, so every sampler
and every model starts from the same noise for the same condition (paired comparisons).

Field integrated per model objective (:mod:`medsynth.objectives.tweedie`):

* ``flow`` models learned ``v``; Euler/Heun/Dopri5 integrate ``v``; the ``tweedie`` sampler integrates
  the Tweedie-corrected ``u = v - (1 - abar) grad log p`` (a training-free correction);
* ``tweedie`` models learned ``u`` through ``v`` (ViCTr Sec. 3.2); every sampler integrates ``u``
  (the ``tweedie`` sampler is the same field with few steps);
* ``ddpm`` models predict noise; only the ``ddpm`` / ``ddim`` samplers (diffusers schedulers) apply.

Classifier-free guidance mixes the conditional and the null condition (empty prompt, all-background
mask: the training-time dropout) as ``v_u + w (v_c - v_u)``, both evaluated in one batched call;
``nfe`` counts solver evaluations of the guided field, ``network_evals`` the backbone passes per
sample (``2 nfe`` with guidance, ``nfe`` without).

MedDiff-FT's guiding mask (a condition set with ``inpaint: {channels, dilate, schedule, max_dilate,
renoise}``): the real slice's own latent is kept outside the region of interest (the union of the
named condition channels at latent resolution, dilated by ``dilate`` latent pixels) and only the ROI
is synthesised, by :func:`medsynth.sample.meddiff.guided_inpaint_euler` (Euler runs only).

Device and preemption: the generator and the VAE run on ``sampling.device`` (``auto``: the GPU when
there is one). Every finished batch is kept in ``<output>.batches/``
(:class:`medsynth.sample.batches.BatchStore`, config ``sampling.keep_batches``); SIGTERM / SIGUSR1
stop the job after the batch in progress (exit status 75) and the rerun samples only the missing
batches - with the same result, since each batch's noise depends only on the seed and its rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsynth.generator.data import LatentData
from medsynth.models.backbones import as_velocity, build_backbone, predict
from medsynth.launch import resolve_device
from medsynth.models.prompts import ABSENT_MASK_VALUE
from medsynth.sample.batches import BatchStore
from medsynth.train.loop import PREEMPTED_EXIT_CODE, SignalFlag
from medsynth.vae.models import model_device

__all__ = [
    "FLOW_SAMPLERS",
    "DIFFUSION_SAMPLERS",
    "SamplingSpec",
    "GeneratedSet",
    "parse_run",
    "load_trained_generator",
    "generate",
    "integrate_latents",
    "SamplingPreempted",
]

log = logging.getLogger(__name__)

FLOW_SAMPLERS = ("euler", "heun", "dopri5", "tweedie")
DIFFUSION_SAMPLERS = ("ddpm", "ddim")


def parse_run(run: str) -> tuple[str, int | None]:
    """``"euler-30"`` -> ``("euler", 30)``; ``"dopri5-auto"`` -> ``("dopri5", None)`` (adaptive)."""
    sampler, _, steps = str(run).partition("-")
    if sampler not in FLOW_SAMPLERS + DIFFUSION_SAMPLERS:
        raise ValueError(f"sampling run {run!r}: sampler must be one of {FLOW_SAMPLERS + DIFFUSION_SAMPLERS}")
    if steps == "auto":
        if sampler != "dopri5":
            raise ValueError(f"sampling run {run!r}: only dopri5 chooses its steps ('auto')")
        return sampler, None
    if not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"sampling run {run!r}: expected <sampler>-<steps>, e.g. euler-30 or dopri5-auto")
    return sampler, int(steps)


@dataclass
class SamplingSpec:
    """How to sample: solver, steps, guidance and the numerics of each solver (config ``sampling``)."""

    sampler: str = "euler"
    steps: int | None = 30
    guidance_scale: float = 1.0
    seed: int = 0
    batch_size: int = 64
    shift: float = 1.0
    rtol: float = 1e-3
    atol: float = 1e-3
    max_num_steps: int = 1000
    tweedie_mapping: str = "variance"
    ddpm: dict = field(default_factory=dict)
    inpaint: dict = field(default_factory=dict)  # MedDiff-FT guiding mask (module docstring); {} = off

    @classmethod
    def from_config(cls, sampling_cfg: Mapping, run: str) -> "SamplingSpec":
        """Spec of run ``<sampler>-<steps>`` with the solver options of config ``sampling``."""
        sampler, steps = parse_run(run)
        cfg = dict(sampling_cfg or {})
        dopri = dict(cfg.get("dopri5") or {})
        return cls(sampler=sampler, steps=steps, guidance_scale=float(cfg.get("guidance_scale", 1.0)),
                   seed=int(cfg.get("seed", 0)), batch_size=int(cfg.get("batch_size", 64)),
                   shift=float(cfg.get("shift", 1.0)), rtol=float(dopri.get("rtol", 1e-3)),
                   atol=float(dopri.get("atol", 1e-3)), max_num_steps=int(dopri.get("max_num_steps", 1000)),
                   tweedie_mapping=str(cfg.get("tweedie_mapping", "variance")), ddpm=dict(cfg.get("ddpm") or {}))


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


# ------------------------------------------------------------------------------------------------ loading
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


# ------------------------------------------------------------------------------------------------ sampling
class _ConditionedField:
    """``field(x, t)`` of one batch of conditions, with classifier-free guidance batched in one pass."""

    def __init__(self, model: nn.Module, mask: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor,
                 null_tokens: torch.Tensor, null_keep: torch.Tensor, guidance: float, corrected: bool,
                 mapping: str):
        self.model, self.guidance, self.corrected, self.mapping = model, guidance, corrected, mapping
        b = mask.shape[0]
        if guidance != 1.0:
            self.mask = torch.cat([mask, torch.full_like(mask, ABSENT_MASK_VALUE)])
            self.tokens = torch.cat([tokens, null_tokens.expand(b, *null_tokens.shape[1:])])
            self.keep = torch.cat([keep, null_keep.expand(b, *null_keep.shape[1:])])
        else:
            self.mask, self.tokens, self.keep = mask, tokens, keep

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided network output (velocity, or noise for a ddpm model) at ``x``, per-sample ``t``.

        An x0-predicting backbone's output is turned into its implied velocity
        (:func:`medsynth.models.backbones.as_velocity`).
        """
        if self.guidance == 1.0:
            return as_velocity(self.model, predict(self.model, x, t, self.tokens, self.keep, mask=self.mask), x, t)
        xx, tt = torch.cat([x, x]), torch.cat([t, t])
        out = as_velocity(self.model, predict(self.model, xx, tt, self.tokens, self.keep, mask=self.mask), xx, tt)
        cond, uncond = out.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = self.raw(x, t)
        if self.corrected:
            from medsynth.objectives import tweedie_corrected_velocity

            return tweedie_corrected_velocity(v, x, t, mapping=self.mapping)
        return v


def _solve_batch(field_fn: _ConditionedField, x1: torch.Tensor, spec: SamplingSpec, objective: str,
                 generator: torch.Generator):
    from medsynth import sample

    if spec.sampler in DIFFUSION_SAMPLERS:
        if objective != "ddpm":
            raise ValueError(f"sampler {spec.sampler!r} needs a noise-prediction (ddpm) model; this one is {objective!r}")
        train_steps = int(spec.ddpm.get("num_train_timesteps", 1000))
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
    options: dict = {"shift": spec.shift} if spec.sampler != "dopri5" else {
        "rtol": spec.rtol, "atol": spec.atol, "max_num_steps": spec.max_num_steps}
    if spec.sampler == "tweedie":
        options["mapping"] = spec.tweedie_mapping
    result = sample.solve(spec.sampler, field_fn, x1, spec.steps, **options)
    return result.x0, result.nfe, result.seconds


INPAINT_DEFAULTS = {"channels": None, "dilate": 1, "schedule": "shrink", "max_dilate": 2, "renoise": False}


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
    pairs are the couplings 2-rectified flow (reflow) trains on. The batches run on the model's device
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
    inpaint = {**INPAINT_DEFAULTS, **spec.inpaint} if spec.inpaint else None
    keep = None
    if inpaint:
        if spec.sampler != "euler" or objective == "ddpm":
            raise ValueError(f"the guiding mask (inpaint) samples with euler-<steps> on a flow model, not {spec.sampler!r}")
        keep = inpaint_keep_mask(masks, list(data.names), inpaint["channels"], int(inpaint["dilate"]))
    device = model_device(model)
    null_tokens, null_keep = null_tokens.to(device), null_keep.to(device)
    out, nfe, seconds = [], 0, 0.0
    for start in range(0, len(latent), spec.batch_size):
        sl = slice(start, start + spec.batch_size)
        done = store.load(start) if store is not None else None
        if done is not None:
            x0, batch_nfe, batch_seconds = done
            log.info("batch at row %d: taken from %s", start, store.folder)
        else:
            x0, batch_nfe, batch_seconds = _sample_batch(model, objective, data, spec, sl, noise, keep, inpaint,
                                                         null_tokens, null_keep, corrected_field, device)
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
                  null_keep: torch.Tensor, corrected_field: bool, device: torch.device
                  ) -> tuple[torch.Tensor, int, float]:
    """One batch of :func:`integrate_latents` on ``device``: ``(x0, nfe, seconds)``."""
    tensors = data.dataset.tensors
    pid = tensors["prompt"][sl]
    field_fn = _ConditionedField(model, tensors["mask"][sl].to(device), data.tokens[pid].to(device),
                                 data.keep[pid].to(device), null_tokens, null_keep, spec.guidance_scale,
                                 corrected_field, spec.tweedie_mapping)
    gen = torch.Generator().manual_seed(spec.seed + 1 + sl.start)
    x1 = noise[sl].to(device)
    if keep is not None:
        from medsynth.sample.meddiff import guided_inpaint_euler

        tic = time.perf_counter()
        x0 = guided_inpaint_euler(field_fn, x1, tensors["latent"][sl].to(device), keep[sl].to(device),
                                  int(spec.steps), spec.shift, gen if inpaint["renoise"] else None,
                                  schedule=inpaint["schedule"], max_dilate=int(inpaint["max_dilate"]))
        return x0, int(spec.steps), time.perf_counter() - tic
    return _solve_batch(field_fn, x1, spec, objective, gen)


@torch.no_grad()
def generate(model: nn.Module, objective: str, data: LatentData, vae: nn.Module, stats: dict,
             spec: SamplingSpec, *, store: BatchStore | None = None, stop: SignalFlag | None = None) -> GeneratedSet:
    """Sample one image per condition of ``data`` (module docstring) and decode it with ``vae``.

    ``store`` / ``stop``: see :func:`integrate_latents`.
    """
    from medsynth.vae.latents import denormalise_latents
    from medsynth.vae.models import decode

    latents, _, nfe, seconds = integrate_latents(model, objective, data, spec, store=store, stop=stop)
    images, device = [], model_device(vae)
    for start in range(0, len(latents), spec.batch_size):
        tic = time.perf_counter()
        z = denormalise_latents(latents[start:start + spec.batch_size].to(device), stats)
        decoded = decode(vae, z).clamp(-1.0, 1.0).cpu()
        seconds += time.perf_counter() - tic
        images.append(decoded.numpy().astype(np.float32))
    evals = nfe * (2 if spec.guidance_scale != 1.0 else 1)
    return GeneratedSet(np.concatenate(images), nfe, evals, seconds, spec)


def write_summary(generated: GeneratedSet, path: str | Path, **extra) -> None:
    """The run's cost and settings as JSON (``n``, ``nfe``, ``network_evals``, ``seconds``...)."""
    from medsynth.fsutil import write_text_atomic

    write_text_atomic(path, json.dumps({**generated.summary(), **extra}, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ rule entry
def sample_condition_set(shards, vae_dir: str | Path, stats_path: str | Path, model_dir: str | Path,
                         init_dir: str | Path | None, out_tensors: str | Path, out_index: str | Path,
                         out_summary: str | Path, gen_cfg: Mapping, model_cfg: Mapping, sampling_cfg: Mapping,
                         run: str, select: Mapping, *, text_encoder=None) -> GeneratedSet:
    """Rule ``sample``: generate one image per real slice kept by ``select`` and write the set.

    ``model_cfg`` is the config section the model was trained with (``base``, ``stage1`` or the
    variant's merged ``stage2``): its ``objective`` picks the field and its ``severity_prompt`` whether
    the prompts carry the severity grade. Writes ``out_tensors`` (safetensors: ``image`` float32
    ``(N, 1, *spatial)`` in [-1, 1], ``masks`` uint8 ``(N, C, *spatial)`` = the conditioning masks at image
    resolution), ``out_index`` (CSV: one row per sample with case, slice, split, prompt, severity) and
    ``out_summary`` (JSON: NFE, seconds, settings). ``shards`` may be slice or volume shards (``spatial``
    ``(H, W)`` or ``(X, Y, Z)``); the VAE and ``gen_cfg["backbone"]`` must have the same dimensionality.
    """
    from safetensors.numpy import save_file

    from medsynth.fsutil import atomic_path, write_csv_atomic
    from medsynth.generator.data import load_slices, select_rows
    from medsynth.generator.stages import _data, _load_vae, _text_encoder, _threads

    _threads(gen_cfg)
    spec = SamplingSpec.from_config(sampling_cfg, run)
    select = dict(select)
    stochastic = select.pop("stochastic_masks", None)  # MedDiff-FT: generated masks instead of the real ones
    inpaint = select.pop("inpaint", None)  # MedDiff-FT: the guiding mask (regenerate the ROI only)
    if inpaint:
        if stochastic:
            raise ValueError("a condition set takes either stochastic_masks or inpaint: the guiding mask keeps the "
                             "real slice outside the ROI, which must agree with the conditioning mask")
        spec = replace(spec, inpaint=dict(inpaint))
    text_encoder = text_encoder or _text_encoder(gen_cfg, None)
    vae, stats = _load_vae(vae_dir, stats_path)
    slices = load_slices(shards)  # read once: the conditions and the real slices the QC compares against
    data = _data(shards, vae_dir, stats_path, gen_cfg, {**dict(model_cfg), "select": select}, text_encoder,
                 vae_stats=(vae, stats), slices=slices)
    index, real_images, all_masks, names = slices
    rows = select_rows(index, select)
    masks = all_masks[rows]
    if stochastic:
        from medsynth.generator.mask_generator import stochastic_conditions

        data, new_masks = stochastic_conditions(data, masks > 0, names, stochastic, gen_cfg,
                                                bool(model_cfg.get("severity_prompt", False)), text_encoder)
        masks = new_masks.astype(np.float32) - 0.5
    device = resolve_device(sampling_cfg.get("device", "auto"), "sampling.device")
    vae.to(device)
    model = load_trained_generator(gen_cfg, model_dir, init_dir).to(device)
    objective = str(model_cfg.get("objective", "flow"))
    store = None
    if sampling_cfg.get("keep_batches", True):
        from medsynth.train.loop import run_fingerprint

        store = BatchStore(Path(str(out_tensors) + ".batches"),
                           run_fingerprint(asdict(spec), run, dict(select), stochastic, dict(gen_cfg), dict(model_cfg),
                                           files=[*shards, vae_dir, stats_path, model_dir, *([init_dir] if init_dir else [])]))
    try:
        with SignalFlag(True) as stop:
            generated = generate(model, objective, data, vae, stats, spec, store=store, stop=stop)
    except SamplingPreempted as err:
        log.warning("%s: %s; the finished batches are in %s, a rerun samples the rest", out_tensors, err,
                    store.folder if store is not None else "(not kept: sampling.keep_batches is off)")
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    qc_cfg = dict(sampling_cfg.get("hu_qc") or {})
    hu_qc: dict = {"enabled": False}
    if qc_cfg.get("enabled"):
        if set(index.iloc[rows]["modality"].astype(str)) != {"CT"}:
            hu_qc = {"enabled": False, "status": "not applicable: the condition set is not all CT"}
        else:
            from medsynth.generator.quality import hu_quality_check

            ref = select_rows(index, qc_cfg.get("reference") or {"split": ["train"], "modality": ["CT"]})
            images, hu_qc = hu_quality_check(model, objective, data, vae, stats, spec, generated.images, masks > 0,
                                             names, real_images[ref], all_masks[ref] > 0, real_images[rows],
                                             sampling_cfg.get("hu_range", (-1024, 1024)), qc_cfg,
                                             real_masks=all_masks[rows] > 0)
            generated.images = images
    with atomic_path(out_tensors, suffix=".safetensors") as tmp:
        save_file({"image": np.ascontiguousarray(generated.images),
                   "masks": np.ascontiguousarray((masks > 0).astype(np.uint8))}, str(tmp),
                  metadata={"medsynth": json.dumps({"conditions": list(names), "run": run})})
    cols = [c for c in ("case_id", "patient_id", "modality", "split", "slice", "organs", "severity_fraction", "severity",
                        "prompt") if c in data.index]
    write_csv_atomic(data.index[cols].assign(sample=range(len(data.index))), out_index)
    write_summary(generated, out_summary, run=run, model=str(model_dir), conditions=list(names),
                  objective=objective, hu_qc=hu_qc)
    if store is not None:
        store.clear()
    log.info("%s: %d samples, %.4f s/sample, %d NFE", out_tensors, len(generated.images),
             generated.seconds_per_sample, generated.nfe)
    return generated



def load_generated(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images (N, 1, *spatial) in [-1, 1], masks (N, C, *spatial) uint8, condition names)`` of a sampled set."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="np") as fh:
        meta = json.loads((fh.metadata() or {}).get("medsynth", "{}"))
    return tensors["image"], tensors["masks"], list(meta.get("conditions", []))
