"""nnU-Net v2 as a downstream segmenter (``downstream.model: {type: nnunetv2, params: {...}}``).

nnU-Net plans, preprocesses and trains itself; this module adapts it to the downstream contract of
:mod:`medsynth.downstream` (2D slices ``(N, 1, H, W)`` in [-1, 1], multi-label binary masks ``(N, C, H, W)``).

Export (:func:`export_dataset`)
-------------------------------
The training slices become an nnU-Net raw dataset ``nnUNet_raw/Dataset{id:03d}_{name}`` with
``imagesTr/case_{i:05d}_0000.nii.gz``, ``labelsTr/case_{i:05d}.nii.gz`` and ``dataset.json``. Each case is a
2D NIfTI written with SimpleITK (array ``(H, W)``, spacing 1 x 1); nnU-Net's ``SimpleITKIO`` reads 2D
images as ``(1, H, W)`` with a dummy out-of-plane spacing (its documented way of feeding 2D data).

* Intensities: the image is written as ``x + INTENSITY_OFFSET`` (``x`` in [-1, 1] -> [1, 3]) so no pixel is
  exactly zero: nnU-Net's crop-to-nonzero then never crops and its ``use_mask_for_norm`` stays off. The
  channel is named ``"zscore"`` (``ZScoreNormalization``: per image ``(v - mean) / max(std, 1e-8)``, population
  std) - not ``"CT"`` (dataset-wide clipping + statistics). A z-score is shift invariant, so the offset
  cancels and :class:`NnUNetSegmenter` reproduces the normalisation exactly from ``x``.
* Labels: the C binary channels become one integer label map, ``c + 1`` for channel ``c`` (0 = background).
  Where channels overlap the **later channel wins** (nnU-Net's softmax output is mutually exclusive).
  Label names are ``class{c}`` unless ``names`` are given.

Training (:func:`train_nnunet_segmenter`)
-----------------------------------------
Runs nnU-Net's ``nnUNetv2_plan_and_preprocess --no_pp``, ``nnUNetv2_preprocess`` and ``nnUNetv2_train``
entry points in subprocesses (nnU-Net
reads ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` at import time) with those folders under
the run's checkpoints folder (``outputs.checkpoints``, a work folder kept between attempts); every
command's output is appended to ``<checkpoints>/logs/<step>.log``. A failing
command raises :class:`NnUNetCommandError` naming the command and the last lines of its output.
``params`` (defaults :data:`DEFAULT_NNUNET_PARAMS`):

* ``configuration`` ("2d"), ``fold`` ("all": train on every case, nnU-Net's pseudo-validation on the same
  cases), ``plans`` ("nnUNetPlans", the plans identifier), ``planner`` ("ExperimentPlanner"; must produce
  ``plans``, e.g. ``nnUNetPlannerResEncM`` -> ``nnUNetResEncUNetMPlans``);
* ``trainer`` ("nnUNetTrainer", used when the setting augments) and ``trainer_no_augmentation``
  ("nnUNetTrainerNoDA", used when ``augment=False``) - any trainer class nnU-Net can find by name, e.g.
  ``nnUNetTrainer_1epoch`` / ``nnUNetTrainer_5epochs`` for smoke tests;
* ``device`` ("cpu"; "cuda" for the paper studies), ``num_processes`` (1: preprocessing workers and
  ``nnUNet_n_proc_DA``, 0 = augmentation in the main process), ``dataset_id`` (901), ``dataset_name``
  ("medsynth"), ``plans_overrides`` ({}: merged recursively into ``plans["configurations"][configuration]``
  after planning and before preprocessing, e.g. ``{"batch_size": 2}`` or a narrower network
  ``{"architecture": {"arch_kwargs": {"features_per_stage": [8, 16, 32, 64, 128]}}}``).

Resume: each stage is skipped when its output is complete (raw dataset renamed into place, a marker after
preprocessing, ``checkpoint_final.pth`` after training); a fold folder holding ``checkpoint_latest.pth``
continues with ``--c``. A changed ``fingerprint``/params/data wipes the checkpoints folder first. nnU-Net's
training is not seeded (its data loading is non-deterministic). SIGTERM/SIGUSR1/SIGINT during training are
forwarded to nnU-Net and the run reports ``status == "preempted"`` (rerun continues from nnU-Net's latest
checkpoint, written every 50 epochs). The final model is copied into ``<final>.tmp`` and renamed to
``outputs.final`` (``segmenter.json`` + ``nnunet/{plans.json, dataset.json, fold_*/checkpoint_final.pth}``).
``outputs.curve`` (epoch, train_loss, val_loss, pseudo_dice, ema_pseudo_dice, lr, seconds) comes
from the logger state stored in the final checkpoint. ``TrainResult.step`` counts **epochs** and
``seconds_per_step`` is seconds per epoch.

Inference (:class:`NnUNetSegmenter`)
------------------------------------
The network (deep supervision off) is rebuilt from the copied plans with nnU-Net's own
``nnUNetPredictor.initialize_from_trained_model_folder``. ``forward(x)``: per-image z-score of ``x``, zero
padding (after normalisation, as nnU-Net pads) to a multiple of the network's total stride, one
full-image forward pass (no sliding window, no mirroring test-time augmentation), crop, then the
softmax logits ``l`` of the K+1 classes become per-channel logits ``out_c = l_{c+1} - logsumexp_{j != c+1} l_j``
= ``log p_{c+1} - log(1 - p_{c+1})``, so ``sigmoid(out_c)`` is exactly nnU-Net's softmax probability of
class ``c + 1``. ``predict_masks`` (``sigmoid > 0.5``) therefore marks pixels where a class has the majority;
this equals nnU-Net's argmax except at pixels where no class exceeds 0.5.
Encoder features: the network's ``encoder`` (PlainConvEncoder / ResidualEncoder, returning its skips) -
the deepest stage, global-average-pooled (``D`` = features of the last stage).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsynth.configmerge import deep_merge
from medsynth.train.config import TrainOutputs, TrainResult
from medsynth.train.signals import PREEMPTION_SIGNALS, forward_signals

__all__ = [
    "DEFAULT_NNUNET_PARAMS",
    "INTENSITY_OFFSET",
    "NnUNetCommandError",
    "NnUNetSegmenter",
    "encode_labels",
    "export_dataset",
    "load_nnunet_segmenter",
    "nnunet_params",
    "run_command",
    "softmax_to_channel_logits",
    "train_nnunet_segmenter",
]

DEFAULT_NNUNET_PARAMS: dict[str, Any] = {
    "configuration": "2d",
    "fold": "all",
    "trainer": "nnUNetTrainer",
    "trainer_no_augmentation": "nnUNetTrainerNoDA",
    "device": "cpu",
    "plans": "nnUNetPlans",
    "planner": "ExperimentPlanner",
    "dataset_id": 901,
    "dataset_name": "medsynth",
    "num_processes": 1,
    "plans_overrides": {},
}
INTENSITY_OFFSET = 2.0  # written intensities x + 2 in [1, 3]: nothing is zero, so nnU-Net never crops
ZSCORE_EPS = 1e-8  # nnunetv2 ZScoreNormalization's eps (float32)
RECORD = "segmenter.json"  # = medsynth.downstream.model.CONFIG
MODEL_SUBDIR = "nnunet"
PREPROCESSED_MARKER = ".medsynth_preprocessed"
LOG_TAIL_LINES = 40


class NnUNetCommandError(RuntimeError):
    """An nnU-Net subprocess failed; the message names the command, its exit code and its last output lines."""


def nnunet_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` merged over :data:`DEFAULT_NNUNET_PARAMS` (unknown keys are an error)."""
    p = {**DEFAULT_NNUNET_PARAMS, **dict(params or {})}
    unknown = set(p) - set(DEFAULT_NNUNET_PARAMS)
    if unknown:
        raise ValueError(f"unknown nnunetv2 params {sorted(unknown)}; known: {sorted(DEFAULT_NNUNET_PARAMS)}")
    p["dataset_id"] = int(p["dataset_id"])
    if not 1 <= p["dataset_id"] <= 999:
        raise ValueError(f"nnunetv2 dataset_id must be in 1..999, got {p['dataset_id']}")
    p["fold"] = str(p["fold"])
    p["num_processes"] = int(p["num_processes"])
    p["plans_overrides"] = dict(p["plans_overrides"] or {})
    return p


def dataset_folder_name(params: Mapping[str, Any]) -> str:
    """``Dataset{id:03d}_{name}`` as nnU-Net names it."""
    return f"Dataset{int(params['dataset_id']):03d}_{params['dataset_name']}"


# ------------------------------------------------------------------------------------------------ export
def encode_labels(labels: np.ndarray) -> np.ndarray:
    """Multi-label binary ``(..., C, H, W)`` -> integer map ``(..., H, W)``: ``c + 1`` where channel ``c`` is set.

    Later channels overwrite earlier ones where they overlap; 0 is background.
    """
    y = np.asarray(labels)
    out = np.zeros(y.shape[:-3] + y.shape[-2:], dtype=np.uint8)
    for c in range(y.shape[-3]):
        out[y[..., c, :, :] > 0.5] = c + 1
    return out


def _label_names(n: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"class{c}" for c in range(n)]
    names = [str(s) for s in names]
    if len(names) != n or len(set(names)) != n or "background" in names:
        raise ValueError(f"need {n} distinct label names other than 'background', got {names}")
    return names


def export_dataset(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, raw_root: str | Path,
                   dataset_id: int = 901, dataset_name: str = "medsynth",
                   names: Sequence[str] | None = None) -> Path:
    """Write slices ``(N, 1, H, W)`` in [-1, 1] and binary labels ``(N, C, H, W)`` as an nnU-Net raw dataset.

    Returns ``raw_root/Dataset{id:03d}_{name}`` (see module docstring for the layout and encodings). The
    dataset is written to a ``.tmp`` folder and renamed, so a complete folder is never partial.
    """
    import SimpleITK as sitk

    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float32)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 4 or x.shape[1] != 1 or y.ndim != 4 or len(x) != len(y) or x.shape[2:] != y.shape[2:]:
        raise ValueError(f"need images (N, 1, H, W) and labels (N, C, H, W), got {x.shape} and {y.shape}")
    label_names = _label_names(y.shape[1], names)
    final = Path(raw_root) / dataset_folder_name({"dataset_id": dataset_id, "dataset_name": dataset_name})
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir(parents=True)
    seg = encode_labels(y)
    for i in range(len(x)):
        img = sitk.GetImageFromArray(x[i, 0] + np.float32(INTENSITY_OFFSET))
        lab = sitk.GetImageFromArray(seg[i])
        for im in (img, lab):
            im.SetSpacing((1.0, 1.0))
        sitk.WriteImage(img, str(tmp / "imagesTr" / f"case_{i:05d}_0000.nii.gz"))
        sitk.WriteImage(lab, str(tmp / "labelsTr" / f"case_{i:05d}.nii.gz"))
    dataset_json = {
        "name": str(dataset_name),
        "description": "medsynth downstream slices: image = x + 2 for x in [-1, 1]; label c+1 = mask channel c "
                       "(later channel wins on overlap)",
        "channel_names": {"0": "zscore"},
        "labels": {"background": 0, **{n: c + 1 for c, n in enumerate(label_names)}},
        "numTraining": int(len(x)),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
    }
    (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


# ------------------------------------------------------------------------------------------------ commands
def nnunet_env(work: str | Path, num_processes: int = 1) -> dict[str, str]:
    """Environment for nnU-Net subprocesses: its three folders under ``work`` and ``nnUNet_n_proc_DA``."""
    work = Path(work)
    env = dict(os.environ)
    env.update({"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_n_proc_DA": str(int(num_processes)),
                "PYTHONUNBUFFERED": "1"})
    return env


def entry_point(name: str) -> list[str]:
    """Command prefix running nnU-Net's console script ``name`` with this interpreter."""
    module, func = {
        "nnUNetv2_plan_and_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                                         "plan_and_preprocess_entry"),
        "nnUNetv2_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "preprocess_entry"),
        "nnUNetv2_train": ("nnunetv2.run.run_training", "run_training_entry"),
    }[name]
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; {func}()"]


def run_command(cmd: Sequence[str], log_path: str | Path, env: Mapping[str, str] | None = None,
                name: str | None = None) -> int | None:
    """Run ``cmd``, appending stdout+stderr to ``log_path``.

    Returns ``None`` on success and the forwarded signal number when a preemption signal arrived (see
    :func:`medsynth.train.signals.forward_signals`); raises :class:`NnUNetCommandError` on any other non-zero exit.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    shown = " ".join([name or cmd[0], *cmd[(3 if name else 1):]])
    with log_path.open("a") as log:
        log.write(f"$ {shown}\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(env) if env is not None else None, bufsize=1, errors="replace")
        with forward_signals(proc, (*PREEMPTION_SIGNALS, signal.SIGINT),
                             translate={s: signal.SIGTERM for s in PREEMPTION_SIGNALS}) as received:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
            code = proc.wait()
    if received:
        return received[0]
    if code != 0:
        raise NnUNetCommandError(f"nnU-Net command failed (exit code {code}): {shown}\nlog: {log_path}\n"
                                 f"last lines of its output:\n" + "\n".join(tail))
    return None


# ------------------------------------------------------------------------------------------------ training
def _fingerprint(x: np.ndarray, y: np.ndarray, params: Mapping[str, Any], augment: bool, fingerprint: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"params": params, "augment": bool(augment), "fingerprint": fingerprint,
                         "shapes": [list(x.shape), list(y.shape)]}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(y > 0.5).tobytes())
    return h.hexdigest()


def _trainer(params: Mapping[str, Any], augment: bool) -> str:
    return str(params["trainer"] if augment else params["trainer_no_augmentation"])


def _apply_plans_overrides(plans_file: Path, configuration: str, overrides: Mapping[str, Any]) -> None:
    if not overrides:
        return
    plans = json.loads(plans_file.read_text())
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"{plans_file}: no configuration {configuration!r} to apply plans_overrides to")
    configs = plans["configurations"]
    configs[configuration] = deep_merge(configs[configuration], json.loads(json.dumps(dict(overrides))))
    plans_file.write_text(json.dumps(plans, indent=2) + "\n")


def loss_curve_rows(logging: Mapping[str, Sequence[Any]]) -> list[dict[str, float]]:
    """One row per epoch from nnU-Net's logger state (``checkpoint["logging"]``)."""
    def at(key: str, i: int) -> float:
        vals = logging.get(key) or []
        return float(vals[i]) if i < len(vals) and vals[i] is not None else math.nan

    rows = []
    for i in range(len(logging.get("train_losses") or [])):
        rows.append({"epoch": i, "train_loss": at("train_losses", i), "val_loss": at("val_losses", i),
                     "pseudo_dice": at("mean_fg_dice", i), "ema_pseudo_dice": at("ema_fg_dice", i),
                     "lr": at("lrs", i),
                     "seconds": at("epoch_end_timestamps", i) - at("epoch_start_timestamps", i)})
    return rows


def write_loss_curve(rows: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Write ``rows`` as CSV (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fields = ["epoch", "train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "seconds"]
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, math.nan) for k in fields})
    tmp.replace(path)
    return path


def train_nnunet_segmenter(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                           cfg: Mapping[str, Any], outputs: TrainOutputs | str | Path, augment: bool = False,
                           names: Sequence[str] | None = None):
    """Train nnU-Net on the slices; returns ``(NnUNetSegmenter, TrainResult)`` like ``train_segmenter``.

    ``cfg`` is the merged downstream training config (``cfg["model"]["params"]``: see
    :data:`DEFAULT_NNUNET_PARAMS`; ``cfg["fingerprint"]`` invalidates stale work). The MONAI loop's keys
    (``steps``, ``lr``, ...) do not apply: nnU-Net's trainer class fixes its schedule (e.g.
    ``nnUNetTrainer_100epochs``). A preempted run returns ``(None, result)`` with ``result.status ==
    "preempted"``; rerunning continues from nnU-Net's ``checkpoint_latest.pth``.
    """
    params = nnunet_params((cfg.get("model") or {}).get("params"))
    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float32)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float32)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need equally many (> 0) images and labels, got {len(x)} and {len(y)}")
    paths = TrainOutputs.of(outputs, "segmenter")
    out = paths.final.parent
    out.mkdir(parents=True, exist_ok=True)
    work, final = paths.checkpoints, paths.final
    record = {k: v for k, v in cfg.items() if k != "fingerprint"}  # the settings, as the MONAI loop records them
    paths.config.write_text(json.dumps(record, indent=2, default=str) + "\n")
    fp = _fingerprint(x, y, params, augment, str(cfg.get("fingerprint", "")))
    trainer, conf, fold = _trainer(params, augment), str(params["configuration"]), params["fold"]
    ds = dataset_folder_name(params)
    model_dir = work / "nnUNet_results" / ds / f"{trainer}__{params['plans']}__{conf}"
    fold_dir = model_dir / f"fold_{fold}"

    if (final / RECORD).exists():
        record = json.loads((final / RECORD).read_text())
        if record.get("meta", {}).get("nnunet_fingerprint") == fp:
            model = load_nnunet_segmenter(final)
            rows = loss_curve_rows(torch.load(final / MODEL_SUBDIR / f"fold_{fold}" / "checkpoint_final.pth",
                                              map_location="cpu", weights_only=False).get("logging", {}))
            write_loss_curve(rows, paths.curve)
            return model, TrainResult(status="completed", step=len(rows), output_dir=out, final_dir=final,
                                      seconds_per_step=_mean_seconds(rows), history=rows)
    fp_file = work / "fingerprint.txt"
    if work.exists() and (not fp_file.exists() or fp_file.read_text().strip() != fp):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    fp_file.write_text(fp + "\n")
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): 0 only for training
    env = nnunet_env(work, max(1, params["num_processes"]))
    logs = work / "logs"

    raw = work / "nnUNet_raw" / ds
    if not (raw / "dataset.json").exists():
        export_dataset(x, y, work / "nnUNet_raw", params["dataset_id"], params["dataset_name"], names=names)
    pre = work / "nnUNet_preprocessed" / ds
    if not (pre / PREPROCESSED_MARKER).exists():
        shutil.rmtree(pre, ignore_errors=True)
        n = str(max(1, params["num_processes"]))
        cmd = [*entry_point("nnUNetv2_plan_and_preprocess"), "-d", str(params["dataset_id"]), "-c", conf,
               "-pl", str(params["planner"]), "-npfp", n, "--verify_dataset_integrity", "--no_pp"]
        run_command(cmd, logs / "plan_and_preprocess.log", env, name="nnUNetv2_plan_and_preprocess")
        plans_file = pre / f"{params['plans']}.json"
        if not plans_file.exists():
            raise NnUNetCommandError(f"nnU-Net planning wrote no {plans_file.name} in {pre}: does planner "
                                     f"{params['planner']!r} produce plans {params['plans']!r}?")
        _apply_plans_overrides(plans_file, conf, params["plans_overrides"])
        cmd = [*entry_point("nnUNetv2_preprocess"), "-d", str(params["dataset_id"]), "-c", conf,
               "-plans_name", str(params["plans"]), "-np", n]
        run_command(cmd, logs / "plan_and_preprocess.log", env, name="nnUNetv2_preprocess")
        (pre / PREPROCESSED_MARKER).write_text(fp + "\n")

    resumed_from = None
    if not (fold_dir / "checkpoint_final.pth").exists():
        cmd = [*entry_point("nnUNetv2_train"), str(params["dataset_id"]), conf, fold, "-tr", trainer,
               "-p", str(params["plans"]), "-device", str(params["device"])]
        if (fold_dir / "checkpoint_latest.pth").exists():
            resumed_from = fold_dir / "checkpoint_latest.pth"
            cmd.append("--c")
        sig = run_command(cmd, logs / "train.log", nnunet_env(work, params["num_processes"]), name="nnUNetv2_train")
        if sig is not None or not (fold_dir / "checkpoint_final.pth").exists():
            if sig is None:
                raise NnUNetCommandError(f"nnUNetv2_train exited 0 but wrote no {fold_dir}/checkpoint_final.pth; "
                                         f"see {logs / 'train.log'}")
            latest = fold_dir / "checkpoint_latest.pth"
            return None, TrainResult(status="preempted", step=0, output_dir=out, signal=sig,
                                     checkpoint=latest if latest.exists() else None, resumed_from=resumed_from)

    checkpoint = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    rows = loss_curve_rows(checkpoint.get("logging", {}))
    write_loss_curve(rows, paths.curve)
    meta = {"n_train": int(len(x)), "augment": bool(augment), "epochs": len(rows), "trainer": trainer,
            "nnunet_fingerprint": fp,
            "train": json.loads(json.dumps({k: v for k, v in cfg.items() if k != "fingerprint"}, default=str))}
    _install_model(model_dir, fold, final, params, n_channels=int(y.shape[1]), trainer=trainer, meta=meta,
                   names=_label_names(y.shape[1], names))
    model = load_nnunet_segmenter(final)
    return model, TrainResult(status="completed", step=len(rows), output_dir=out,
                              checkpoint=fold_dir / "checkpoint_final.pth", final_dir=final,
                              resumed_from=resumed_from, seconds_per_step=_mean_seconds(rows), history=rows)


def _mean_seconds(rows: Sequence[Mapping[str, float]]) -> float:
    vals = [r["seconds"] for r in rows if math.isfinite(r["seconds"])]
    return float(np.mean(vals)) if vals else math.nan


def _install_model(model_dir: Path, fold: str, final: Path, params: Mapping[str, Any], n_channels: int,
                   trainer: str, meta: Mapping[str, Any], names: Sequence[str]) -> Path:
    """Copy the trained model folder (plans, dataset.json, the fold's final checkpoint and log) and write the
    ``segmenter.json`` record into ``final`` via a temporary folder."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dst = tmp / MODEL_SUBDIR
    (dst / f"fold_{fold}").mkdir(parents=True)
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (model_dir / f).exists():
            shutil.copy2(model_dir / f, dst / f)
    src_fold = model_dir / f"fold_{fold}"
    shutil.copy2(src_fold / "checkpoint_final.pth", dst / f"fold_{fold}" / "checkpoint_final.pth")
    for f in sorted(src_fold.glob("training_log_*.txt")) + [src_fold / "progress.png"]:
        if f.exists():
            shutil.copy2(f, dst / f"fold_{fold}" / f.name)
    record = {"model": {"type": "nnunetv2", "params": dict(params)}, "in_channels": 1, "out_channels": int(n_channels),
              "class": f"{NnUNetSegmenter.__module__}.{NnUNetSegmenter.__qualname__}",
              "nnunet": {"model_folder": MODEL_SUBDIR, "fold": fold, "checkpoint": "checkpoint_final.pth",
                         "trainer": trainer, "plans": params["plans"], "configuration": params["configuration"],
                         "label_names": list(names), "intensity_offset": INTENSITY_OFFSET,
                         "normalization": "per-image z-score"},
              "meta": dict(meta)}
    (tmp / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


# ------------------------------------------------------------------------------------------------ inference
def softmax_to_channel_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K+1, ...)`` softmax logits (class 0 = background) -> ``(B, K, ...)`` per-class logits
    ``log p_c - log(1 - p_c)`` for classes ``1..K``, computed stably as ``l_c - logsumexp_{j != c} l_j``."""
    n = logits.shape[1]
    out = []
    for c in range(1, n):
        others = torch.cat([logits[:, :c], logits[:, c + 1:]], dim=1)
        out.append(logits[:, c] - torch.logsumexp(others, dim=1))
    return torch.stack(out, dim=1)


def _total_stride(configuration_manager: Any, ndim: int = 2) -> list[int]:
    strides = configuration_manager.network_arch_init_kwargs.get("strides") or \
        configuration_manager.pool_op_kernel_sizes
    total = [1] * ndim
    for s in strides:
        s = [s] * ndim if isinstance(s, int) else list(s)
        total = [a * int(b) for a, b in zip(total, s[-ndim:])]
    return total


class NnUNetSegmenter(nn.Module):
    """A trained nnU-Net 2D network as a downstream segmenter (see module docstring).

    ``forward(x)``: ``x`` ``(B, 1, H, W)`` in [-1, 1] -> per-channel logits ``(B, C, H, W)`` with
    ``sigmoid(out[:, c]) = softmax probability of class c + 1``. ``encoder`` is the network's encoder.
    """

    def __init__(self, network: nn.Module, num_channels: int, stride: Sequence[int] = (1, 1),
                 record: Mapping[str, Any] | None = None):
        super().__init__()
        self.network = network
        self.stride = tuple(int(s) for s in stride)
        self.segmenter_channels = (1, int(num_channels))
        self.segmenter_record = dict(record or {})

    @property
    def encoder(self) -> nn.Module:
        """The encoder of the nnU-Net network; its forward returns the skips, the last one is the deepest."""
        return self.network.encoder

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """nnU-Net's ``ZScoreNormalization`` per image and channel (population std, eps 1e-8)."""
        x = x.float()
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
        return (x - mean) / std.clamp_min(ZSCORE_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        h, w = z.shape[-2:]
        ph, pw = (-h) % self.stride[0], (-w) % self.stride[1]
        if ph or pw:
            z = nn.functional.pad(z, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        logits = self.network(z)
        if isinstance(logits, (list, tuple)):  # deep supervision left on: full resolution first
            logits = logits[0]
        logits = logits[..., ph // 2: ph // 2 + h, pw // 2: pw // 2 + w].float()
        return softmax_to_channel_logits(logits)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence nnU-Net's import-time prints about unset ``nnUNet_*`` folders."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def load_nnunet_segmenter(folder: str | Path, device: str | torch.device = "cpu") -> NnUNetSegmenter:
    """The :class:`NnUNetSegmenter` written to ``folder`` by :func:`train_nnunet_segmenter` (eval mode)."""
    folder = Path(folder)
    record = json.loads((folder / RECORD).read_text())
    info = record["nnunet"]
    with _quiet():
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
                                    allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder / info["model_folder"]), use_folds=(info["fold"],),
                                                       checkpoint_name=info["checkpoint"])
    n_heads = predictor.label_manager.num_segmentation_heads
    if predictor.label_manager.has_regions or n_heads - 1 != int(record["out_channels"]):
        raise ValueError(f"{folder}: nnU-Net model has {n_heads} output classes, expected background + "
                         f"{record['out_channels']} channels")
    model = NnUNetSegmenter(predictor.network, int(record["out_channels"]),
                            stride=_total_stride(predictor.configuration_manager), record=record)
    return model.to(device).eval()
