"""TotalSegmentator (nnU-Net v2) behind the ``Segmenter`` interface, offline only.

Weights: the nnU-Net results folders (``Dataset297_TotalSegmentator_total_3mm_1559subj/...``)
live in one directory, taken from the ``weights_dir`` argument (config key
``masks.segmenters[].totalsegmentator.weights_dir``), else from TotalSegmentator's own variables:
``TOTALSEG_WEIGHTS_PATH`` (the results directory itself), else ``$TOTALSEG_HOME_DIR/nnunet/results``,
else ``~/.totalsegmentator/nnunet/results``. Before anything runs, every model the request needs
(the task's model, plus the 6 mm ``total`` model that ``roi_subset`` uses to crop) is checked down to
``fold_*/checkpoint_final.pth``; a missing one raises ``WeightsUnavailable`` instead of letting
TotalSegmentator download it from its GitHub release. A results folder may also sit one level down, in a
folder of its own name (``Dataset315_thoraxCT/Dataset315_thoraxCT/...``: a release zip, which holds its
folder at the top, unpacked into a folder named after the zip, as the weights rule does); TotalSegmentator
then reads a private folder of links to each model (:func:`linked_results`).

Usage statistics: TotalSegmentator posts a record of every run to stats.totalsegmentator.com
unless ``send_usage_stats`` is false in ``config.json`` of its home directory (there is no
environment variable for it). Each call therefore runs with ``TOTALSEG_HOME_DIR`` pointing at a
private temporary directory whose ``config.json`` has ``send_usage_stats: false`` (a license number
found in the real home's config.json is copied over for licensed tasks), and
``totalsegmentator.python_api.send_usage_stats`` is replaced by a no-op as a second guard. The
user's ``~/.totalsegmentator/config.json`` is neither read for statistics nor written.

Processes: nnU-Net v2 always runs preprocessing and export in worker processes started with the
``spawn`` method (plus a ``multiprocessing.Manager``), whatever the thread settings. Spawned
children re-import the parent's ``__main__``, so a script that calls ``segment`` must keep the
call under ``if __name__ == "__main__":``. Snakemake ``script:`` files run as ``__main__`` and
pytest's entry point is guarded, so both are fine; a bare top-level call in a script would recurse.
``nr_threads`` sets TotalSegmentator's ``nr_thr_resamp`` and ``nr_thr_saving`` (the number of those
workers and of the resampling jobs), 1 by default, the fewest the API allows. Torch itself is set by
TotalSegmentator to ``cpu_count()`` threads on CPU, capped by nnU-Net at ``nnUNet_def_n_proc``
(default 8), and restored afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medsynth.masks.types import Segmentation, WeightsUnavailable

CONFIG_KEY = "masks.segmenters[].totalsegmentator.weights_dir"
WEIGHTS_ENV = "TOTALSEG_WEIGHTS_PATH"
HOME_ENV = "TOTALSEG_HOME_DIR"
RELEASE_URL = "https://github.com/wasserth/TotalSegmentator/releases/download"
#: nnU-Net settings TotalSegmentator's python_api uses when calling nnUNet_predict_image
_DEFAULT_PLANS = "nnUNetPlans"
_CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class ModelFolder:
    """One nnU-Net results folder a TotalSegmentator run reads."""

    task_id: int
    trainer: str
    plans: str
    configuration: str
    folds: tuple

    def dataset_folder(self) -> str:
        from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

        info = TASK_ID_WEIGHTS_CONFIGS[self.task_id]
        rel = info.get("rel_path")
        return str(Path(rel) / info["foldername"]) if rel else info["foldername"]

    def trained_model_folder(self, weights_dir: Path) -> Path:
        return weights_dir / self.dataset_folder() / f"{self.trainer}__{self.plans}__{self.configuration}"

    def required_files(self, weights_dir: Path) -> list[Path]:
        base = self.trained_model_folder(weights_dir)
        files = [base / "dataset.json", base / "plans.json"]
        files += [base / f"fold_{fold}" / _CHECKPOINT for fold in self.folds]
        return files

    def url(self) -> str:
        from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

        info = TASK_ID_WEIGHTS_CONFIGS[self.task_id]
        if info.get("commercial") or info.get("version") in (None, "TODO"):
            return "https://backend.totalsegmentator.com (licensed model; run totalseg_set_license first)"
        return f"{RELEASE_URL}/{info['version']}/{info['foldername']}.zip"


def default_weights_dir() -> Path:
    """Where TotalSegmentator itself looks: $TOTALSEG_WEIGHTS_PATH, $TOTALSEG_HOME_DIR/nnunet/results, ~/.totalsegmentator/..."""
    from totalsegmentator.config import get_weights_dir

    return Path(get_weights_dir())


def _download_hint(task_ids: list[int]) -> str:
    """The ``totalseg_download_weights -t ...`` commands that fetch ``task_ids``."""
    try:
        from totalsegmentator.bin.totalseg_download_weights import TASK_TO_ID
    except Exception:  # pragma: no cover - layout of a future release
        return "totalseg_download_weights -t <task>"
    names: list[str] = []
    for tid in task_ids:
        holders = sorted((len(ids), name) for name, ids in TASK_TO_ID.items() if tid in ids)
        if holders and holders[0][1] not in names:
            names.append(holders[0][1])
    return " && ".join(f"totalseg_download_weights -t {n}" for n in names) or "totalseg_download_weights -t <task>"


class TotalSegmentatorSegmenter:
    """TotalSegmentator through its Python API, CPU by default, never touching the network.

    Args:
        task: a TotalSegmentator task (``total``, ``total_mr``, ``lung_vessels``, ...).
        fast: use the 3 mm model of ``total``/``total_mr``/``body`` (one network instead of five).
        roi_subset: class names of ``task`` to keep (``total``/``total_mr`` only); TotalSegmentator
            then also runs its 6 mm ``total`` model (3 mm ``total_mr`` for MR) to crop first.
        device: ``cpu``, ``gpu``, ``gpu:N`` or ``mps``.
        weights_dir: folder holding the nnU-Net results folders (see module docstring).
        nr_threads: TotalSegmentator's ``nr_thr_resamp`` and ``nr_thr_saving``.
    """

    name = "totalsegmentator"

    def __init__(self, task: str = "total", fast: bool = True, roi_subset: list[str] | None = None,
                 device: str = "cpu", weights_dir: str | os.PathLike | None = None, nr_threads: int = 1):
        from totalsegmentator.map_tasks_config import TASK_CONFIGS
        from totalsegmentator.map_to_binary import class_map

        if task not in TASK_CONFIGS or task not in class_map:
            raise ValueError(f"unknown TotalSegmentator task {task!r} (masks.segmenters[].totalsegmentator.task)")
        if TASK_CONFIGS[task].get("disallow_fast") and fast:
            raise ValueError(f"TotalSegmentator task {task!r} has no fast model; set fast: false")
        if roi_subset is not None:
            roi_subset = [str(r) for r in roi_subset]
            if not task.startswith("total"):
                raise ValueError("roi_subset only works with the total / total_mr tasks")
            unknown = sorted(set(roi_subset) - set(class_map[task].values()))
            if unknown:
                raise ValueError(f"roi_subset names not in TotalSegmentator's {task!r} classes: {unknown}")
        if int(nr_threads) < 1:
            raise ValueError("nr_threads must be >= 1")
        self.task = task
        self.fast = bool(fast)
        self.roi_subset = roi_subset
        self.device = str(device)
        self.weights_dir = weights_dir
        self.nr_threads = int(nr_threads)

    # ----------------------------------------------------------------- weights
    def resolved_weights_dir(self) -> Path:
        if self.weights_dir is not None and str(self.weights_dir) != "":
            return Path(self.weights_dir).expanduser()
        return default_weights_dir()

    def required_models(self) -> list[ModelFolder]:
        """Every nnU-Net results folder that ``totalsegmentator()`` will read for this request."""
        return _required_models(self.task, self.fast, self.roi_subset)

    def check_weights(self) -> Path:
        """The weights directory, after checking every required file is in it, directly or one level down
        (:func:`model_root`; else ``WeightsUnavailable``)."""
        weights_dir = self.resolved_weights_dir()
        missing: list[Path] = []
        missing_models: list[ModelFolder] = []
        for model in self.required_models():
            absent = [p for p in model.required_files(weights_dir) if not p.is_file()]
            if absent and model_root(weights_dir, model) is None:
                missing += absent
                missing_models.append(model)
        if missing:
            where = "the weights_dir argument" if self.weights_dir else (
                f"${WEIGHTS_ENV}" if WEIGHTS_ENV in os.environ else
                f"${HOME_ENV}/nnunet/results" if HOME_ENV in os.environ else "the default ~/.totalsegmentator/nnunet/results")
            shown = "\n  ".join(str(p) for p in missing[:6]) + ("\n  ..." if len(missing) > 6 else "")
            urls = "\n  ".join(m.url() for m in missing_models)
            raise WeightsUnavailable(
                f"TotalSegmentator weights for task {self.task!r} (fast={self.fast}) are not in {weights_dir} "
                f"(from {where}); missing:\n  {shown}\n"
                f"Point the config key {CONFIG_KEY} (or the env var {WEIGHTS_ENV}, the folder of nnU-Net results "
                f"folders; or {HOME_ENV}, whose nnunet/results is used) at a folder holding them. They come from "
                f"TotalSegmentator's GitHub release; on a machine with internet run "
                f"`{_download_hint([m.task_id for m in missing_models])}` (with {WEIGHTS_ENV} set to the target folder) "
                f"or fetch and unzip:\n  {urls}\ninto that folder. Nothing is downloaded from here."
            )
        return weights_dir

    # ---------------------------------------------------------------- segment
    def segment(self, image: nib.Nifti1Image, modality: str) -> Segmentation:
        """Label map of ``image`` on its grid; ids and names from ``class_map[task]`` (roi_subset only)."""
        from totalsegmentator.map_to_binary import class_map
        from totalsegmentator.registry import task_modality

        expected = task_modality(self.task)
        if str(modality).upper() != expected:
            raise ValueError(f"TotalSegmentator task {self.task!r} is for {expected}, got a {modality} image "
                             f"(use total_mr and friends for MR)")
        if len(image.shape) != 3:
            raise ValueError(f"expected a 3D image, got shape {image.shape}")
        weights_dir = self.check_weights()

        with linked_results(weights_dir, self.required_models()) as results, _offline_totalseg_env(results):
            import totalsegmentator.python_api as api

            api.send_usage_stats = _no_usage_stats  # second guard; config.json already says false
            # the input nibabel image is passed as is: TotalSegmentator copies it with get_fdata()
            try:
                seg = api.totalsegmentator(
                    input=image, output=None, ml=True, task=self.task, fast=self.fast,
                    roi_subset=self.roi_subset, device=self.device, quiet=True, verbose=False,
                    nr_thr_resamp=self.nr_threads, nr_thr_saving=self.nr_threads,
                    statistics=False, radiomics=False, preview=False, skip_saving=True,
                    output_type="nifti", body_seg=False, license_number=None,
                )
            except SystemExit as exc:  # TotalSegmentator sys.exit()s on license and input problems
                raise RuntimeError(f"TotalSegmentator exited ({exc.code}) for task {self.task!r}") from exc

        labels = np.asarray(seg.dataobj).astype(np.uint8)
        if labels.shape != image.shape[:3]:
            raise RuntimeError(f"TotalSegmentator returned shape {labels.shape} for input {image.shape}")
        if not np.allclose(seg.affine, image.affine, atol=1e-4):
            raise RuntimeError(f"TotalSegmentator returned another grid:\n{seg.affine}\nfor input\n{image.affine}")
        names = {int(k): str(v) for k, v in class_map[self.task].items()}
        if self.roi_subset is not None:
            names = {k: v for k, v in names.items() if v in self.roi_subset}
        return Segmentation(nib.Nifti1Image(labels, image.affine), names)


def _no_usage_stats(*args, **kwargs) -> None:
    return None


def model_root(weights_dir: Path, model: ModelFolder) -> Path | None:
    """The folder that holds ``model``'s results folder complete: ``weights_dir`` itself, or
    ``weights_dir/<results folder>`` (a release zip unpacked into a folder of its own name); None: neither."""
    for root in (weights_dir, weights_dir / model.dataset_folder()):
        if all(p.is_file() for p in model.required_files(root)):
            return root
    return None


@contextlib.contextmanager
def linked_results(weights_dir: Path, models: list[ModelFolder]):
    """A results folder where every model of ``models`` sits at the top: ``weights_dir`` when they all do,
    else a private temporary folder of links to each one (the nested ones one level down)."""
    roots = {model: model_root(weights_dir, model) or weights_dir for model in models}
    if all(root == weights_dir for root in roots.values()):
        yield weights_dir
        return
    with tempfile.TemporaryDirectory(prefix="medsynth_totalseg_results_") as tmp:
        for model, root in roots.items():
            link = Path(tmp) / model.dataset_folder()
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((root / model.dataset_folder()).resolve(), target_is_directory=True)
        yield Path(tmp)


def _required_models(task: str, fast: bool, roi_subset: list[str] | None) -> list[ModelFolder]:
    """Mirror of the model choice in ``totalsegmentator.python_api.totalsegmentator`` (installed 2.x)."""
    from totalsegmentator.python_api import get_task_config

    try:
        cfg = get_task_config(task, fast=fast, fastest=False, quiet=True, plans=_DEFAULT_PLANS)
    except SystemExit as exc:  # licensed task without a license number: it prints why and exits
        raise WeightsUnavailable(
            f"TotalSegmentator task {task!r} needs a license number (totalseg_set_license -l <number>, stored in "
            f"${HOME_ENV}/config.json or ~/.totalsegmentator/config.json) and its weights in the folder named by "
            f"{CONFIG_KEY} / {WEIGHTS_ENV}") from exc
    folds = tuple(cfg.get("folds") or [0])
    ids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
    models = [ModelFolder(int(t), cfg["trainer"], cfg.get("plans") or _DEFAULT_PLANS, cfg.get("model") or "3d_fullres",
                          folds) for t in ids]
    crop = cfg.get("crop")
    if crop is not None or roi_subset is not None or cfg.get("cascade"):
        crop_model = cfg.get("crop_model")
        if crop_model is None:
            is_mr = task.endswith("_mr")
            robust = bool(cfg.get("robust_crop"))
            crop_id = 852 if is_mr else (297 if robust else 298)
            trainer = "nnUNetTrainer_2000epochs_NoMirroring" if is_mr else "nnUNetTrainer_4000epochs_NoMirroring"
            if crop is not None and ("body_trunc" in crop or "body_extremities" in crop):
                crop_id, trainer = 300, "nnUNetTrainer"
            models.append(ModelFolder(crop_id, trainer, _DEFAULT_PLANS, "3d_fullres", (0,)))
        else:
            models += _required_models(crop_model, False, None)
    if task == "vertebrae_pp_refined":
        models.append(ModelFolder(305, "nnUNetTrainer_DASegOrd0", _DEFAULT_PLANS, "3d_fullres", (0,)))
    seen, unique = set(), []
    for m in models:
        if m not in seen:
            seen.add(m)
            unique.append(m)
    return unique


def _private_config(home: Path) -> None:
    """config.json that turns usage statistics off (and carries a license number, if the user has one)."""
    config = {"totalseg_id": "totalseg_medsynth", "send_usage_stats": False, "prediction_counter": 0,
              "statistics_disclaimer_shown": True}
    try:
        from totalsegmentator.config import get_license_number

        license_number = get_license_number()  # reads the user's real home config.json, if any
        if license_number:
            config["license_number"] = license_number
    except Exception:  # unreadable user config: no license, still offline
        pass
    (home / "config.json").write_text(json.dumps(config, indent=4))


@contextlib.contextmanager
def _offline_totalseg_env(weights_dir: Path):
    """Set TOTALSEG_WEIGHTS_PATH to ``weights_dir`` and TOTALSEG_HOME_DIR to a private stats-off home."""
    # TotalSegmentator's setup_nnunet() also sets the nnU-Net paths to the weights folder: restore them too
    saved = {k: os.environ.get(k) for k in (WEIGHTS_ENV, HOME_ENV, "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with tempfile.TemporaryDirectory(prefix="medsynth_totalseg_home_") as home:
        _private_config(Path(home))
        os.environ[WEIGHTS_ENV] = str(weights_dir)
        os.environ[HOME_ENV] = home
        try:
            yield Path(home)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
