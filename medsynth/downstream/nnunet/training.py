"""Training through nnU-Net's planner, preprocessor and trainer, resumable (see :mod:`medsynth.downstream.nnunet`)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth.configmerge import deep_merge
from medsynth.train.config import TrainOutputs, TrainResult
from medsynth.train.curve import write_curve

from .commands import entry_point, nnunet_env, run_command
from .dataset import export_dataset, label_names
from .inference import NnUNetSegmenter, load_nnunet_segmenter
from .params import (
    INTENSITY_OFFSET,
    MODEL_SUBDIR,
    PREPROCESSED_MARKER,
    RECORD,
    NnUNetCommandError,
    dataset_folder_name,
    nnunet_params,
)

__all__ = ["CURVE_COLUMNS", "loss_curve_rows", "train_nnunet_segmenter"]

#: the columns of an nnU-Net run's loss curve (one row per epoch)
CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "seconds")


def work_fingerprint(x: np.ndarray, y: np.ndarray, params: Mapping[str, Any], augment: bool, fingerprint: str) -> str:
    """Identity of an nnU-Net run's work (data, params, augmentation, the study's fingerprint)."""
    h = hashlib.sha256()
    h.update(json.dumps({"params": params, "augment": bool(augment), "fingerprint": fingerprint,
                         "shapes": [list(x.shape), list(y.shape)]}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(y > 0.5).tobytes())
    return h.hexdigest()


def trainer_name(params: Mapping[str, Any], augment: bool) -> str:
    """The nnU-Net trainer class of a run: ``trainer`` when the setting augments, else ``trainer_no_augmentation``."""
    return str(params["trainer"] if augment else params["trainer_no_augmentation"])


def apply_plans_overrides(plans_file: Path, configuration: str, overrides: Mapping[str, Any]) -> None:
    """Merge ``overrides`` into ``plans["configurations"][configuration]`` of the plans file (after planning)."""
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


def train_nnunet_segmenter(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                           cfg: Mapping[str, Any], outputs: TrainOutputs | str | Path, augment: bool = False,
                           names: Sequence[str] | None = None):
    """Train nnU-Net on the slices; returns ``(NnUNetSegmenter, TrainResult)`` like ``train_segmenter``.

    ``cfg`` is the complete downstream training config (``train_segmenter`` passes
    :func:`medsynth.downstream.train.train_settings`'s, the schema's defaults filled in;
    ``cfg["model"]["params"]``: see :data:`DEFAULT_NNUNET_PARAMS`; ``cfg["fingerprint"]`` invalidates stale
    work). The MONAI loop's keys
    (``steps``, ``lr``, ...) do not apply: nnU-Net's trainer class fixes its schedule (e.g.
    ``nnUNetTrainer_100epochs``). A preempted run returns ``(None, result)`` with ``result.status ==
    "preempted"``; rerunning continues from nnU-Net's ``checkpoint_latest.pth``.
    """
    params = nnunet_params(cfg["model"]["params"])
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
    fp = work_fingerprint(x, y, params, augment, str(cfg["fingerprint"]))
    trainer, conf, fold = trainer_name(params, augment), str(params["configuration"]), params["fold"]
    ds = dataset_folder_name(params)
    model_dir = work / "nnUNet_results" / ds / f"{trainer}__{params['plans']}__{conf}"
    fold_dir = model_dir / f"fold_{fold}"

    if (final / RECORD).exists():
        record = json.loads((final / RECORD).read_text())
        if record.get("meta", {}).get("nnunet_fingerprint") == fp:
            model = load_nnunet_segmenter(final)
            rows = loss_curve_rows(torch.load(final / MODEL_SUBDIR / f"fold_{fold}" / "checkpoint_final.pth",
                                              map_location="cpu", weights_only=False).get("logging", {}))
            write_curve(paths.curve, rows, CURVE_COLUMNS)
            return model, TrainResult(status="completed", step=len(rows), output_dir=out, final_dir=final,
                                      seconds_per_step=mean_seconds(rows), history=rows)
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
        apply_plans_overrides(plans_file, conf, params["plans_overrides"])
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
    write_curve(paths.curve, rows, CURVE_COLUMNS)
    meta = {"n_train": int(len(x)), "augment": bool(augment), "epochs": len(rows), "trainer": trainer,
            "nnunet_fingerprint": fp,
            "train": json.loads(json.dumps({k: v for k, v in cfg.items() if k != "fingerprint"}, default=str))}
    install_model(model_dir, fold, final, params, n_channels=int(y.shape[1]), trainer=trainer, meta=meta,
                   names=label_names(y.shape[1], names))
    model = load_nnunet_segmenter(final)
    return model, TrainResult(status="completed", step=len(rows), output_dir=out,
                              checkpoint=fold_dir / "checkpoint_final.pth", final_dir=final,
                              resumed_from=resumed_from, seconds_per_step=mean_seconds(rows), history=rows)


def mean_seconds(rows: Sequence[Mapping[str, float]]) -> float:
    """Mean seconds per epoch of a loss curve (NaN without finite values)."""
    vals = [r["seconds"] for r in rows if math.isfinite(r["seconds"])]
    return float(np.mean(vals)) if vals else math.nan


def install_model(model_dir: Path, fold: str, final: Path, params: Mapping[str, Any], n_channels: int,
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
