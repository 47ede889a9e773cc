"""Sampling from a trained generator: conditions of real slices (or volumes) in, decoded synthetic ones out.

Everything here works on ``(N, C, *spatial)``: 2D slices with a 2D backbone and VAE, or 3D volumes
(MAISI-v2 / MedSyn2 3D studies: ``trainsets/volumes`` shards, the 3D MAISI VAE, ``maisi_unet3d`` or the
3D ``medsyn2_dit``) with the same functions and the same three output files. An x0-predicting
backbone (MedSyn2) is integrated through its implied velocity
(:func:`medsynth.models.backbones.predict_velocity`). MAISI's HU quality check works per organ on
either.

A *sampling run* is one trained model (``base``, ``stage1`` or a stage-2 variant) x one sampler
setting (``euler``, ``heun``, ``dopri5``, ``tweedie``, ``ddpm``, ``ddim`` with a step count, or the
adaptive ``dopri5-auto``) x one
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

Counterfactual and progressive sets (``edit: {strength, severity, add_channels, remove_channels}``, ViCTr
Fig. 3 / 8; ``progressive: {strength, stages}``, MedSyn2 Fig. 5): the real slices edited towards a changed
condition by SDEdit, :mod:`medsynth.generator.edits` (Euler runs only; no HU check, no kept batches for
progressive sets, whose rows are the stages' images one stage after the other).

Device and preemption: the generator and the VAE run on ``sampling.device`` (``auto``: the GPU when
there is one). Every finished batch is kept in ``<output>.batches/``
(:class:`medsynth.sample.batches.BatchStore`, config ``sampling.keep_batches``); SIGTERM / SIGUSR1
stop the job after the batch in progress (exit status 75) and the rerun samples only the missing
batches - with the same result, since each batch's noise depends only on the seed and its rows.

The numerics live in :mod:`medsynth.generator.integrate`, the guided field in
:mod:`medsynth.generator.field`, the set's file format in :mod:`medsynth.io.generated`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from medsynth.fsutil import write_csv_atomic
from medsynth.generator.data import select_rows
from medsynth.generator.integrate import (
    GeneratedSet,
    decode_latents,
    SamplingPreempted,
    SamplingSpec,
    generate,
    load_trained_generator,
    write_summary,
)
from medsynth.generator.loaders import (
    inpainting_settings,
    load_latent_data,
    load_vae,
    prompt_settings,
    resolve_text_encoder,
    set_generator_threads,
)
from medsynth.io.generated import write_generated
from medsynth.io.trainsets import load_rows, read_index
from medsynth.launch import resolve_device
from medsynth.sample.batches import BatchStore
from medsynth.settings import section
from medsynth.train.signals import PREEMPTED_EXIT_CODE, SignalFlag

__all__ = ["condition_set", "sample_condition_set"]

log = logging.getLogger(__name__)

#: the columns of a set's index CSV (those its conditions have): edit / progressive sets add their source and stage
INDEX_COLUMNS = ("case_id", "patient_id", "modality", "split", "slice", "organs", "severity_fraction", "severity",
                 "prompt", "source_case", "source_slice", "source_prompt", "strength", "stage", "stage_channels",
                 "host_case", "host_slice")


def condition_set(select: Mapping) -> dict:
    """A condition set (config ``sampling.condition_sets.<name>``) with the schema's defaults of its options
    filled in (``inpaint``'s)."""
    return section("sampling", {"condition_sets": {"set": dict(select)}})["condition_sets"]["set"]


def sample_condition_set(shards, vae_dir: str | Path, stats_path: str | Path, model_dir: str | Path,
                         init_dir: str | Path | None, out_tensors: str | Path, out_index: str | Path,
                         out_summary: str | Path, gen_cfg: Mapping, model_cfg: Mapping, sampling_cfg: Mapping,
                         run: str, select: Mapping, *, text_encoder=None) -> GeneratedSet:
    """Rule ``sample``: generate one image per real slice kept by ``select`` and write the set.

    ``model_cfg`` is the complete config section the model was trained with (``base``, ``stage1``, the
    variant's merged ``stage2`` or ``volumes.training``): its ``objective`` picks the field and its
    ``severity_prompt`` whether the prompts carry the severity grade. ``sampling_cfg``: config ``sampling``
    (keys left out take the schema's defaults) and ``hu_range``, the CT window of the HU check (the rule
    passes ``intensity.ct_hu_range``; left out: the schema's). ``select``: the condition set (its options
    completed by :func:`condition_set`). Writes ``out_tensors`` (safetensors: ``image`` float32
    ``(N, 1, *spatial)`` in [-1, 1], ``masks`` uint8 ``(N, C, *spatial)`` = the conditioning masks at image
    resolution), ``out_index`` (CSV: one row per sample with case, slice, split, prompt, severity) and
    ``out_summary`` (JSON: NFE, seconds, settings). ``shards`` may be slice or volume shards (``spatial``
    ``(H, W)`` or ``(X, Y, Z)``); the VAE and ``gen_cfg["backbone"]`` must have the same dimensionality.
    """

    set_generator_threads(gen_cfg)
    sampling_cfg = dict(sampling_cfg)
    hu_range = sampling_cfg.pop("hu_range") if "hu_range" in sampling_cfg else section("intensity")["ct_hu_range"]
    sampling_cfg = section("sampling", sampling_cfg)
    spec = SamplingSpec.from_config(sampling_cfg, run)
    select = condition_set(select)
    stochastic = select.pop("stochastic_masks", None)  # MedDiff-FT: generated masks instead of the real ones
    inpaint = select.pop("inpaint", None)  # MedDiff-FT: the guiding mask (regenerate the ROI only)
    if inpaint:
        if stochastic:
            raise ValueError("a condition set takes either stochastic_masks or inpaint: the guiding mask keeps the "
                             "real slice outside the ROI, which must agree with the conditioning mask")
        spec = replace(spec, inpaint=dict(inpaint))
    edit = select.pop("edit", None)  # ViCTr Fig. 3 / 8: counterfactuals of the real slices
    progressive = select.pop("progressive", None)  # MedSyn2 Fig. 5: conditions added stage by stage
    special = [k for k, v in (("stochastic_masks", stochastic), ("inpaint", inpaint), ("edit", edit),
                              ("progressive", progressive)) if v]
    if len(special) > 1:
        raise ValueError(f"a condition set takes one of stochastic_masks, inpaint, edit, progressive; got {special}")
    if (edit or progressive) and spec.sampler != "euler":
        raise ValueError(f"an edit / progressive condition set samples with euler-<steps> (SDEdit on Euler's grid), "
                         f"not {run!r}")
    if edit:
        spec = replace(spec, edit={"strength": float(edit["strength"])})
    inpainting = inpainting_settings(gen_cfg)
    if inpainting and (edit or progressive):
        raise ValueError("edit / progressive condition sets do not take inpainting inputs "
                         "(generator.inpainting_inputs): their masks change without a masked image to match")
    text_encoder = text_encoder or resolve_text_encoder(gen_cfg, None)
    vae, stats = load_vae(vae_dir, stats_path)
    qc_cfg = sampling_cfg["hu_qc"]
    # read once, and only the condition set's rows; the HU check's reference gives its bounds shard by shard
    index = read_index(shards)
    rows = select_rows(index, select)
    qc_applies = (bool(qc_cfg["enabled"]) and set(index.iloc[rows]["modality"].astype(str)) == {"CT"}
                  and not (edit or progressive))
    slices = load_rows(shards, rows, index)  # in index order: load_latent_data takes the set's rows as they are
    # a stochastic set's inpainting inputs are built under its new masks (_host_new_masks), not under the real ones
    data_cfg = {**dict(gen_cfg), "inpainting_inputs": {"enabled": False}} if stochastic else gen_cfg
    data = load_latent_data(shards, vae_dir, stats_path, data_cfg, {**dict(model_cfg), "select": select}, text_encoder,
                            vae_stats=(vae, stats), slices=slices)
    _, real_images, masks, names = slices
    real_masks = masks > 0  # the condition set's real masks (the HU check's yardstick), before any replacement
    if qc_applies:  # the bounds first: a reference that keeps no slice fails before any sampling
        from medsynth.generator.quality import reference_bounds

        bounds, _ = reference_bounds(shards, qc_cfg["reference"], hu_range, qc_cfg)
    if stochastic:
        from medsynth.generator.mask_generator import stochastic_conditions

        data, new_masks = stochastic_conditions(data, masks > 0, names, stochastic, gen_cfg,
                                                bool(model_cfg["severity_prompt"]), text_encoder)
        masks = new_masks.astype(np.float32) - 0.5
        data = _host_new_masks(data, stochastic, inpainting, real_images, real_masks, new_masks, names, vae, stats,
                               int(prompt_settings(gen_cfg)["encode_batch_size"]))
    if edit:
        from medsynth.generator.edits import edit_conditions

        data, new_masks = edit_conditions(data, masks, edit, gen_cfg, bool(model_cfg["severity_prompt"]), text_encoder)
        masks = new_masks.astype(np.float32) - 0.5
    device = resolve_device(sampling_cfg["device"], "sampling.device")
    vae.to(device)
    model = load_trained_generator(gen_cfg, model_dir, init_dir).to(device)
    objective = str(model_cfg["objective"])
    store = None
    if progressive:
        return _sample_progressive(model, objective, data, masks, progressive, vae, stats, spec, gen_cfg, model_cfg,
                                   text_encoder, out_tensors, out_index, out_summary, run, model_dir, names)
    if sampling_cfg["keep_batches"]:
        from medsynth.train.loop import run_fingerprint

        store = BatchStore(Path(str(out_tensors) + ".batches"),
                           run_fingerprint(asdict(spec), run, dict(select), stochastic or edit, dict(gen_cfg), dict(model_cfg),
                                           files=[*shards, vae_dir, stats_path, model_dir, *([init_dir] if init_dir else [])]))
    try:
        with SignalFlag(True) as stop:
            generated = generate(model, objective, data, vae, stats, spec, store=store, stop=stop)
    except SamplingPreempted as err:
        log.warning("%s: %s; the finished batches are in %s, a rerun samples the rest", out_tensors, err,
                    store.folder if store is not None else "(not kept: sampling.keep_batches is off)")
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    hu_qc: dict = {"enabled": False}
    if qc_cfg["enabled"] and edit:
        hu_qc = {"enabled": False, "status": "not applicable: a counterfactual (edit) set"}
    elif qc_cfg["enabled"]:
        if not qc_applies:
            hu_qc = {"enabled": False, "status": "not applicable: the condition set is not all CT"}
        else:
            from medsynth.generator.quality import hu_quality_check

            images, hu_qc = hu_quality_check(model, objective, data, vae, stats, spec, generated.images, masks > 0,
                                             names, bounds, real_images, hu_range, qc_cfg, real_masks=real_masks)
            generated.images = images
    write_generated(out_tensors, generated.images, masks > 0, list(names), run)
    cols = [c for c in INDEX_COLUMNS if c in data.index]
    table = data.index[cols].assign(sample=range(len(data.index)))
    for column, values in hu_qc.pop("per_sample", {}).items():  # each slice's HU check (the metrics' intervals)
        table[column] = values
    write_csv_atomic(table, out_index)
    write_summary(generated, out_summary, run=run, model=str(model_dir), conditions=list(names),
                  objective=objective, hu_qc=hu_qc)
    if store is not None:
        store.clear()
    log.info("%s: %d samples, %.4f s/sample, %d NFE", out_tensors, len(generated.images),
             generated.seconds_per_sample, generated.nfe)
    return generated


def _host_new_masks(data, stochastic, inpainting, real_images, real_masks, new_masks, names, vae, stats, batch_size):
    """With inpainting inputs, the context of each new (stochastic) mask drawn into its host slice (the set's own
    slice, or a lesion-free one: ``stochastic_masks.hosts``); the index records lesion-free hosts."""
    from medsynth.generator.inpainting import inpainting_context, lesion_free_hosts
    from medsynth.generator.mask_generator import mask_generator_options

    options = mask_generator_options(stochastic)
    if not inpainting:
        if options["hosts"] != "own":
            raise ValueError("stochastic_masks.hosts = lesion_free needs generator.inpainting_inputs (without them "
                             "a new mask is not drawn into any slice)")
        return data
    hosts = np.arange(len(new_masks))
    if options["hosts"] == "lesion_free":
        hosts = lesion_free_hosts(real_masks, names, inpainting["channels"], len(new_masks), int(options["seed"]))
        data.index = data.index.assign(host_case=data.index["case_id"].to_numpy()[hosts],
                                       host_slice=data.index["slice"].to_numpy()[hosts])
    data.dataset.tensors["context"] = inpainting_context(vae, stats, real_images[hosts], new_masks, names,
                                                         inpainting["channels"], batch_size)
    return data


def _sample_progressive(model, objective, data, masks, progressive, vae, stats, spec, gen_cfg, model_cfg, text_encoder,
                        out_tensors, out_index, out_summary, run, model_dir, names) -> GeneratedSet:
    """A ``progressive`` set (MedSyn2 Fig. 5, :func:`medsynth.generator.edits.progressive_latents`): every stage's
    images written one stage after the other, each row with its stage's masks and prompt."""
    import pandas as pd
    import torch

    from medsynth.generator.edits import progressive_latents

    latents, datas, binary, nfe, seconds = progressive_latents(
        model, objective, data, masks, progressive, gen_cfg, bool(model_cfg["severity_prompt"]), text_encoder, spec)
    images, decode_seconds = decode_latents(torch.cat(latents), vae, stats, spec.batch_size)
    generated = GeneratedSet(images, nfe, nfe * (2 if spec.guidance_scale != 1.0 else 1), seconds + decode_seconds,
                             spec)
    write_generated(out_tensors, images, np.concatenate(binary), list(names), run)
    table = pd.concat([d.index[[c for c in INDEX_COLUMNS if c in d.index]] for d in datas], ignore_index=True)
    write_csv_atomic(table.assign(sample=range(len(table))), out_index)
    write_summary(generated, out_summary, run=run, model=str(model_dir), conditions=list(names), objective=objective,
                  hu_qc={"enabled": False, "status": "not applicable: a progressive set"},
                  progressive={"strength": float(progressive["strength"]),
                               "stages": [list(s) for s in progressive["stages"]]})
    log.info("%s: %d stages x %d conditions, %d NFE", out_tensors, len(latents), len(data.index), nfe)
    return generated
