"""Entry functions of the VAE and generator rules (ViCTr Sec. 3.3 staged training).

* :func:`run_base` - the base generator: rectified flow in z-normalised latent space on every selected
  training slice, masks concatenated, compound prompts as cross-attention context.
* :func:`run_stage1` - ViCTr stage 1: diagonal Fisher of the base on its own data selects the layers
  to unfreeze (:func:`medsynth.train.select_layers`); fine-tune them on the stage-1 slices with the EWC
  penalty anchored at the base weights. ``ewc.safetensors`` keeps Fisher, anchor and the selection.
* :func:`run_stage2` - one variant (a named override set of ``stage2``): ``method: lora`` freezes the
  stage-1 model and trains LoRA adapters only inside the layers stage 1 unfroze; ``objective: tweedie``
  uses the Tweedie-corrected loss, and ``consistency`` weights add the temporal/spatial consistency
  losses against the frozen stage-1 model. ``method: full`` fine-tunes every weight (vanilla).
  ``reflow`` trains on the init model's own (noise, sample) couplings (with ``reflow.distill``: only at
  ``t = 1``, Flow Straight and Fast's one-step distillation); ``dmd`` distils the init model into a
  one-step generator (:mod:`medsynth.generator.distill`); ``adversarial`` adds a latent patch
  discriminator's term (:class:`AdversarialPair`).

Volumes (MAISI-v2 / MedSyn2 3D studies): the same functions take the ``trainsets/volumes`` shards; with
``vae.model`` the 3D MAISI config (``spatial_dims: 3``) :func:`medsynth.vae.stage.run_vae` tunes it on whole
volumes (and mask channels), and the stages train a 3D backbone (``maisi_unet3d``: ``params.mask_input`` routes the
mask to the ControlNet and/or the input channels; ``medsyn2_dit`` with ``spatial_dims: 3``,
``prediction: x0``: MedSyn2's x-prediction v-loss, see :mod:`medsynth.generator.objective`) on the volume latents.

Every stage trains with :func:`medsynth.train.train` (checkpoints every ``checkpoint_every`` steps,
automatic resume from the newest one, SIGTERM -> checkpoint + exit code 75) and writes ``final/``,
``loss_curve.csv``, ``train_config.json`` and ``prompts.csv`` under its output folder.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from medsynth.configmerge import variant_config
from medsynth.fsutil import write_csv_atomic, write_text_atomic
from medsynth.launch import is_main_process
from medsynth.generator.data import LatentData, shard_condition_names
from medsynth.generator.objective import AdversarialTerm, ConsistencyTerms, EWCPenalty
from medsynth.generator.players import AdversarialPair, build_discriminator
from medsynth.generator.step import GeneratorStep, build_step, contrastive_term, roi_contrastive_term
from medsynth.settings import section
from medsynth.generator.loaders import (
    check_channels,
    load_backbone,
    load_latent_data,
    load_vae,
    resolve_text_encoder,
    set_generator_threads,
)
from medsynth.models.backbones import build_backbone
from medsynth.train.loop import derive_seed, run_fingerprint
from medsynth.variants import check_stage2
from medsynth.train import (
    EWCTerm,
    TrainConfig,
    TrainOutputs,
    add_lora,
    anchor_parameters,
    fisher_diagonal,
    load_ewc,
    lora_targets,
    save_ewc,
    select_layers,
    train,
    unfreeze,
)

__all__ = ["AdversarialPair", "GeneratorStep", "StageOutputs", "run_base", "run_stage1", "run_stage2", "variant_config", "train_config"]

log = logging.getLogger(__name__)

#: what a stage-2 model folder says of itself (method, objective, init model, one-step, format)
STAGE2_META = "medsynth_stage2.json"

_TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"output_dir", "save_final", "handle_signals"}


# ------------------------------------------------------------------------------------------------ helpers


def train_config(stage_cfg: Mapping, output_dir: str | Path, fingerprint: str = "") -> TrainConfig:
    """:class:`TrainConfig` from the training keys of a stage section (``steps``, ``lr``, ...).

    ``fingerprint`` (:func:`medsynth.train.loop.run_fingerprint` of the settings and input files) keeps
    a rerun with other settings or regenerated inputs from resuming this run's checkpoints.
    """
    kwargs = {k: stage_cfg[k] for k in _TRAIN_KEYS if k in stage_cfg and k != "fingerprint"}
    kwargs["fingerprint"] = fingerprint
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return TrainConfig(output_dir=str(output_dir), **kwargs)


@dataclass(frozen=True)
class StageOutputs:
    """The files a generator stage writes, as its rule declares them (``ewc`` / ``selected_layers``:
    stage 1 only). A rule's task passes its outputs; :meth:`under` is the layout of one folder."""

    train: TrainOutputs
    prompts: Path
    slices: Path
    ewc: Path | None = None
    selected_layers: Path | None = None

    @property
    def folder(self) -> Path:
        """The run's folder (``TrainConfig.output_dir``)."""
        return self.train.final.parent

    @classmethod
    def under(cls, folder: str | Path) -> "StageOutputs":
        """``final/``, ``loss_curve.csv``, ``train_config.json``, ``prompts.csv``, ``slices.csv``,
        ``ewc.safetensors``, ``selected_layers.json`` (and the work folders) in ``folder``."""
        folder = Path(folder)
        return cls(TrainOutputs.under(folder), folder / "prompts.csv", folder / "slices.csv",
                   folder / "ewc.safetensors", folder / "selected_layers.json")

    @classmethod
    def of(cls, where: "StageOutputs | str | Path") -> "StageOutputs":
        """``where`` itself, or the layout of the folder it names."""
        return where if isinstance(where, StageOutputs) else cls.under(where)


def _write_prompts(data: LatentData, outputs: StageOutputs) -> None:
    if not is_main_process():  # one writer in a multi-process launch
        return
    counts = data.index["prompt"].value_counts()
    table = pd.DataFrame({"prompt_id": range(len(data.prompts)), "prompt": data.prompts,
                          "slices": [int(counts.get(p, 0)) for p in data.prompts]})
    write_csv_atomic(table, outputs.prompts)
    cols = [c for c in ("case_id", "modality", "split", "slice", "severity_fraction", "severity", "prompt")
            if c in data.index]
    write_csv_atomic(data.index[cols], outputs.slices)


def _finish(result, out_dir: Path) -> None:
    if result.status != "completed":
        raise SystemExit(result.exit_code)  # preempted: checkpoint written, the job is requeued / rerun
    log.info("%s: %d steps, %.4f s/step", out_dir, result.step, result.seconds_per_step)


# ------------------------------------------------------------------------------------------------ stages
def run_base(shards: Sequence[str], vae_dir: str | Path, stats_path: str | Path, outputs: StageOutputs | str | Path,
             gen_cfg: Mapping, stage_cfg: Mapping, *, text_encoder=None, contrastive: Mapping | None = None):
    """Train the base generator from scratch (or from ``generator.backbone.pretrained``); ``outputs``:
    where it writes (:class:`StageOutputs`, or a folder with that layout). ``contrastive``: config
    ``volumes.contrastive`` (the 3D generator's MAISI-v2 region contrastive term; disabled or ``None``: none)."""
    set_generator_threads(gen_cfg)
    outputs, stage_cfg = StageOutputs.of(outputs), section("base", stage_cfg)
    data = load_latent_data(shards, vae_dir, stats_path, gen_cfg, stage_cfg, text_encoder)
    torch.manual_seed(derive_seed(int(stage_cfg["seed"]), "init"))  # seeded initialisation
    model = build_backbone(dict(gen_cfg["backbone"]), key="generator.backbone")
    check_channels(model, data)
    _write_prompts(data, outputs)
    extras, term_cfg = [], []
    if contrastive is not None and contrastive["enabled"]:  # a disabled term leaves the fingerprint as it was
        names = shard_condition_names(next(str(p) for p in shards if str(p).endswith(".safetensors")))
        extras, term_cfg = [roi_contrastive_term(contrastive, names, int(stage_cfg["steps"]))], [dict(contrastive)]
    fp = run_fingerprint(gen_cfg, stage_cfg, *term_cfg, files=[*shards, vae_dir, stats_path])
    result = train(model, build_step(data, stage_cfg, extras=extras), data.dataset,
                   train_config(stage_cfg, outputs.folder, fp), outputs=outputs.train)
    _finish(result, outputs.folder)
    return result


def _fisher(model: nn.Module, data: LatentData, ewc_cfg: Mapping, seed: int) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of ``model`` on ``data`` with the plain flow loss, seeded batches and draws."""
    step = GeneratorStep(data.tokens, data.keep, data.null_id, pooled=data.pooled)
    n, bs = len(data.dataset), int(ewc_cfg["fisher_batch_size"])
    gen = torch.Generator().manual_seed(int(seed))
    batches = [(data.dataset.get_batch(torch.randint(0, n, (bs,), generator=gen).tolist()), i)
               for i in range(int(ewc_cfg["fisher_batches"]))]

    def loss_fn(m, item):
        batch, i = item
        return step(m, batch, i, torch.Generator().manual_seed(int(seed) * 1000 + i))["loss"]

    return fisher_diagonal(model, batches, loss_fn)


def run_stage1(shards: Sequence[str], vae_dir: str | Path, stats_path: str | Path, base_dir: str | Path,
               outputs: StageOutputs | str | Path, gen_cfg: Mapping, stage_cfg: Mapping, base_cfg: Mapping, *,
               text_encoder=None):
    """ViCTr stage 1: EWC layer selection on the base's own data, then EWC-penalised fine-tuning."""
    set_generator_threads(gen_cfg)
    outputs, stage_cfg, base_cfg = StageOutputs.of(outputs), section("stage1", stage_cfg), section("base", base_cfg)
    text_encoder = resolve_text_encoder(gen_cfg, text_encoder)
    ewc_cfg = stage_cfg["ewc"]
    model = load_backbone(gen_cfg, base_dir)
    vae_stats = load_vae(vae_dir, stats_path)  # both datasets stream the shards (one shard's images at a time)
    base_data = load_latent_data(shards, vae_dir, stats_path, gen_cfg, base_cfg, text_encoder, severity=False,
                                 vae_stats=vae_stats)
    fisher = _fisher(model, base_data, ewc_cfg, int(stage_cfg["seed"]))
    del base_data
    top_k = ewc_cfg["top_k"]
    selected = select_layers(fisher, top_fraction=None if top_k else float(ewc_cfg["top_fraction"]),
                             top_k=int(top_k) if top_k else None, granularity=ewc_cfg["granularity"],
                             largest=bool(ewc_cfg["largest"]))
    trainable = unfreeze(model, selected)
    anchor = anchor_parameters(model, trainable)
    if is_main_process():  # every worker computes the same selection; one writes it
        save_ewc(outputs.ewc, {n: fisher[n] for n in trainable}, anchor, selected)
        write_text_atomic(outputs.selected_layers, json.dumps(
            {"selected": selected, "trainable_parameters": trainable,
             "n_trainable": int(sum(anchor[n].numel() for n in trainable)),
             "n_total": int(sum(p.numel() for p in model.parameters()))}, indent=2) + "\n")
    ewc = EWCTerm(anchor, {n: fisher[n] for n in trainable}, float(ewc_cfg["lambda"]))
    data = load_latent_data(shards, vae_dir, stats_path, gen_cfg, stage_cfg, text_encoder, vae_stats=vae_stats)
    del vae_stats
    _write_prompts(data, outputs)
    fp = run_fingerprint(gen_cfg, stage_cfg, base_cfg, files=[*shards, vae_dir, stats_path, base_dir])
    result = train(model, build_step(data, stage_cfg, extras=[EWCPenalty(ewc)]), data.dataset,
                   train_config(stage_cfg, outputs.folder, fp), outputs=outputs.train)
    _finish(result, outputs.folder)
    return result


def reflow_pairs(model: nn.Module, data: LatentData, reflow_cfg: Mapping, objective: str) -> None:
    """2-rectified flow (ViCTr Table 4 "ReFlow"): replace each training latent by the model's own sample.

    The model (the stage-2 starting point) integrates one noise draw per training condition with the
    configured sampler; the dataset's ``latent`` becomes that sample and ``noise`` the draw it came
    from, so stage 2 regresses the straight coupling ``noise - sample`` (Liu et al. 2023). ``reflow_cfg``:
    ``stage2.reflow`` or ``stage2.dmd.pairs`` (``run`` and sampling keys); a ``run`` left out takes
    ``stage2.reflow.run``'s schema default, the sampling keys ``sampling``'s (:meth:`SamplingSpec.from_config`).
    """
    from medsynth.generator.integrate import SamplingSpec, integrate_latents

    run = reflow_cfg["run"] if "run" in reflow_cfg else section("stage2")["reflow"]["run"]
    spec = SamplingSpec.from_config(reflow_cfg, str(run))
    x0, noise, nfe, seconds = integrate_latents(model.eval(), objective, data, spec)
    data.dataset.tensors["latent"] = x0.contiguous()
    data.dataset.tensors["noise"] = noise.contiguous()
    log.info("reflow: %d pairs from %s (%d NFE, %.1f s)", len(x0), spec.sampler, nfe, seconds)


def run_stage2(shards: Sequence[str], vae_dir: str | Path, stats_path: str | Path, init_dir: str | Path,
               ewc_path: str | Path, outputs: StageOutputs | str | Path, gen_cfg: Mapping, stage_cfg: Mapping, *,
               text_encoder=None,
               ddpm_cfg: Mapping | None = None):
    """ViCTr stage 2 for one variant (``stage_cfg`` = :func:`variant_config`). Returns ``(result, model)``.

    ``init_dir``: the model stage 2 starts from (``stage2.init``: the stage-1 model, or the base
    model for the ``no_stage1`` ablation); LoRA targets are the layers stage 1's Fisher selected
    (``ewc_path``). ``reflow.enabled`` trains on the init model's own (noise, sample) pairs.
    ``ddpm_cfg``: noise schedule of the ``ddpm`` objective (config ``sampling.ddpm``).
    """
    stage_cfg = section("stage2", stage_cfg)
    check_stage2(stage_cfg)  # before anything is loaded: options that exclude each other, named
    set_generator_threads(gen_cfg)
    outputs = StageOutputs.of(outputs)
    method, objective = str(stage_cfg["method"]), str(stage_cfg["objective"])
    model = load_backbone(gen_cfg, init_dir)
    data = load_latent_data(shards, vae_dir, stats_path, gen_cfg, stage_cfg, text_encoder)
    reflow, dmd, cons = stage_cfg["reflow"], stage_cfg["dmd"], stage_cfg["consistency"]
    consistency = bool(float(cons["temporal_weight"]) or float(cons["spatial_weight"]))
    if reflow["enabled"]:
        reflow_pairs(model, data, reflow, str(reflow["teacher_objective"]))
        if reflow["distill"]:  # Flow Straight and Fast: distil the coupling into the one-step map
            stage_cfg = {**stage_cfg, "timesteps": "one_step"}
    teacher = fake = None
    if dmd["enabled"]:
        reflow_pairs(model, data, dict(dmd["pairs"]), str(dmd["teacher_objective"]))
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        fake = copy.deepcopy(model).train().requires_grad_(True)
    extras = []
    if consistency:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        extras.append(ConsistencyTerms(reference, temporal_weight=float(cons["temporal_weight"]),
                                       spatial_weight=float(cons["spatial_weight"]),
                                       grad_weight=float(cons["grad_weight"]), step_size=float(cons["step_size"])))
    if method == "lora":
        _, _, selected = load_ewc(ewc_path)
        targets = lora_targets(model, selected)
        lora = stage_cfg["lora"]
        torch.manual_seed(derive_seed(int(stage_cfg["seed"]), "lora-init"))  # seeded adapter initialisation
        add_lora(model, targets, int(lora["rank"]), float(lora["alpha"]), float(lora["dropout"]))
    else:  # full
        model.requires_grad_(True)
    _write_prompts(data, outputs)
    names = shard_condition_names(next(str(p) for p in shards if str(p).endswith(".safetensors")))
    fp = run_fingerprint(gen_cfg, stage_cfg, ddpm_cfg, files=[*shards, vae_dir, stats_path, init_dir, ewc_path])
    contrastive = contrastive_term(stage_cfg, names)
    if contrastive is not None:
        extras.append(contrastive)
    meta = {"method": method, "objective": objective, "init": str(init_dir),
            "one_step": bool(dmd["enabled"] or reflow["distill"]),
            "format": "lora adapter on the init model (medsynth.train.load_lora)" if method == "lora"
            else "diffusers save_pretrained"}
    final_files = {STAGE2_META: json.dumps(meta, indent=2) + "\n"}  # written with the model, in one rename
    adversarial = stage_cfg["adversarial"]
    if adversarial["enabled"]:
        latent = data.dataset.tensors["latent"]
        torch.manual_seed(derive_seed(int(stage_cfg["seed"]), "discriminator-init"))
        disc = build_discriminator(adversarial, latent.shape[1] + data.dataset.tensors["mask"].shape[1],
                                   latent.ndim - 2)
        weight = float(adversarial["weight"])
        step = build_step(data, stage_cfg, ddpm_cfg, extras,
                          adversarial=AdversarialTerm(weight) if weight > 0 else None)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]},
                  {"params": list(disc.parameters()), "lr": float(adversarial["lr"])}]
        result = train(AdversarialPair(model, disc), step, data.dataset, train_config(stage_cfg, outputs.folder, fp),
                       trainable_params=groups, outputs=outputs.train, final_files=final_files)
    elif dmd["enabled"]:
        from medsynth.generator.distill import DistillationPair, DistributionMatchingStep

        pair = DistillationPair(model, fake)
        step = DistributionMatchingStep(data.tokens, data.keep, data.null_id, teacher,
                                        guidance_scale=float(dmd["guidance_scale"]),
                                        regression_weight=float(dmd["regression_weight"]),
                                        fake_weight=float(dmd["fake_weight"]),
                                        t_range=tuple(float(v) for v in dmd["t_range"]), pooled=data.pooled)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]},
                  {"params": list(fake.parameters()), "lr": float(dmd["fake_lr"])}]
        result = train(pair, step, data.dataset, train_config(stage_cfg, outputs.folder, fp), trainable_params=groups,
                       outputs=outputs.train, final_files=final_files)
    else:
        result = train(model, build_step(data, stage_cfg, ddpm_cfg, extras), data.dataset,
                       train_config(stage_cfg, outputs.folder, fp), outputs=outputs.train, final_files=final_files)
    _finish(result, outputs.folder)
    return result, model
