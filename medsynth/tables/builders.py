"""One function per paper table: the pipeline's measured values beside the papers' reported ones.

Inputs are the JSON files the metrics and downstream rules write (see :mod:`medsynth.evaluation`):
``metrics/<model>/<run>.json`` and ``downstream/<setting>/evaluation.json``. Every builder returns a
:class:`pandas.DataFrame` with the row keys, ``ours`` columns, ``paper`` columns (from
``config/paper_reported``, ``"not reported"`` where the paper has no such row) and a ``scale``
column saying on how much data ours was computed. Where the embedded study measures a quantity with
another instrument than the paper (FD on a self-trained encoder instead of M3D-CLIP's), the column
name says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from medsynth.names import parse_setting

from .paper import load_reported, reported
from .cells import downstream_scale, fd_value, measured, measured_row, paired_gain, value_or_reason
from .render import NOT_MEASURED, NOT_REPORTED

__all__ = [
    "BACKBONE_PAPER_NAMES", "DOWNSTREAM_PAPER_SETTINGS", "load_json", "fd_scale", "victr_table2", "victr_table3",
    "victr_table4", "medsyn2_table1", "medsyn2_table6", "medsyn2_table7", "maisi_steps",
    "maisi_main", "maisi_contrastive", "maisi_hu_qc", "meddiff_ft",
]

#: Backbone type of the config -> the name ViCTr Table 2 uses for it.
BACKBONE_PAPER_NAMES = {
    "unet2d_condition": "Stable Diffusion",
    "sdxl": "Stable Diffusion XL",
    "sd3": "Stable Diffusion-3",
    "pixart": "Pixart-alpha",
    "flux": "Flux",
}
#: Downstream setting kind -> ViCTr Table 3 setting name.
DOWNSTREAM_PAPER_SETTINGS = {
    "real": "original",
    "real_aug": "standard_augmentation",
    "real_synth-vanilla": "plus30_synthetic_vanilla",
    "real_synth-victr": "plus30_synthetic_victr",
}


def load_json(path: str | Path) -> dict:
    """A metrics / evaluation JSON file."""
    return json.loads(Path(path).read_text())


def fd_scale(metrics: Mapping) -> str:
    """``"94 real vs 94 generated 64x64 slices"`` (or ``... 64x64x64 volumes``) from a metrics JSON."""
    shape = list(metrics.get("image_size", []))
    kind = "volumes" if len(shape) == 3 or metrics.get("spatial_dims") == 3 else "slices"
    return f"{metrics['n_real']} real vs {metrics['n_generated']} generated {'x'.join(map(str, shape))} {kind}"


def _fd_self_name(metrics_list: Sequence[Mapping]) -> str:
    names = {m.get("fd_self", {}).get("extractor", "") for m in metrics_list}
    return f"FD ({'; '.join(sorted(n for n in names if n))})"


# ------------------------------------------------------------------------------------------------ ViCTr
def victr_t2_key(model: str, run: str | None = None) -> str:
    """Input name of a Table 2 record: the model, or ``<model> <run>`` for a run other than the default."""
    return model if run is None else f"{model} {run}"


def victr_table2(metrics: Mapping[str, Mapping], backbone_type: str, paper_dir: str | Path,
                 columns: Sequence[Mapping[str, str]]) -> pd.DataFrame:
    """ViCTr Table 2: FID / MFID of vanilla fine-tuning vs ViCTr per dataset and backbone, with steps and seconds.

    ``metrics``: :func:`victr_t2_key` -> metrics JSON of that model's run; ``columns``: the paper's datasets,
    each ``{dataset, vanilla: <model>, victr: <model>}`` with optional ``vanilla_run`` / ``victr_run``
    (config ``tables.victr_t2``; default: the study's default run).
    """
    paper = load_reported(paper_dir, "victr_table2")
    backbone = BACKBONE_PAPER_NAMES.get(backbone_type, backbone_type)
    fd_name = _fd_self_name(list(metrics.values()))
    rows = []
    for column in columns:
        dataset = column["dataset"]
        for method in ("vanilla", "victr"):
            m = metrics[victr_t2_key(column[method], column.get(f"{method}_run"))]
            s = m.get("sampling", {})
            published = {metric: reported(paper, "value", dataset=dataset, backbone=backbone, method=method,
                                          metric=metric) for metric in ("FID", "MFID")}
            # the paper gives steps and seconds per backbone, over all datasets (its rows: dataset "all")
            cost = {metric: reported(paper, "value", dataset="all", backbone=backbone, method=method, metric=metric)
                    for metric in ("steps", "seconds")}
            rows.append({
                "dataset": dataset, "backbone": backbone, "method": method, "model": column[method], "run": m["run"],
                "FID (InceptionV3)": fd_value(m, "fid"), "paper FID": published["FID"],
                "MFID (M3D-CLIP)": fd_value(m.get("fd_pretrained") or {}, "m3d_clip"),
                "paper MFID (M3D-CLIP)": published["MFID"], fd_name: fd_value(m, "fd_self"),
                "steps": s.get("steps"), "NFE": s.get("nfe"), "seconds per sample": s.get("seconds_per_sample"),
                "paper steps": cost["steps"], "paper seconds": cost["seconds"], "scale": fd_scale(m),
            })
    return pd.DataFrame(rows)


def victr_table3(evaluations: Mapping[str, Mapping], segmenter: str, paper_dir: str | Path,
                 dataset: str) -> pd.DataFrame:
    """ViCTr Table 3: mDSC (%) and mHD95 of a segmenter trained per setting, on the real test split."""
    paper = load_reported(paper_dir, "victr_table3")
    rows = []
    for setting, e in evaluations.items():
        name = DOWNSTREAM_PAPER_SETTINGS.get(setting, setting)
        rows.append({
            "model": segmenter, "setting": setting,
            "mDSC (%)": measured(e, "mdsc", value_or_reason(e, "mdsc", 100.0), 100.0),
            "paper mDSC (%)": reported(paper, "value", dataset=dataset, model=segmenter, setting=name, metric="mDSC"),
            f"mHD95 ({e.get('hd95_unit', 'mm')})": measured(e, "mhd95", e["mhd95"]),
            "paper mHD95 (mm)": reported(paper, "value", dataset=dataset, model=segmenter, setting=name,
                                         metric="mHD95"),
            "scale": downstream_scale(e),
        })
    return pd.DataFrame(rows)


def victr_table4(rows_cfg: Sequence[Mapping], metrics: Mapping[str, Mapping], paper_dir: str | Path) -> pd.DataFrame:
    """ViCTr Table 4 ablations: one row per ``{group, setting, model[, run]}`` of config; FD of the model's run."""
    paper = load_reported(paper_dir, "victr_table4")
    fd_name = _fd_self_name(list(metrics.values()))
    rows = []
    for row in rows_cfg:
        m = metrics[row["model"]]
        rows.append({"group": row["group"], "setting": row["setting"], "model": row["model"], "run": m.get("run"),
                     "FID (InceptionV3)": fd_value(m, "fid"), fd_name: fd_value(m, "fd_self"),
                     "paper FID": reported(paper, "FID", group=row["group"], setting=row["setting"]),
                     "scale": fd_scale(m)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ MedSyn2
def medsyn2_table1(m: Mapping, paper_dir: str | Path, paper_model: str = "MedSyn2") -> pd.DataFrame:
    """MedSyn2 Table 1: FD per CT window x plane (+ mean), ours on the self-trained encoder and on the paper's
    RadImageNet ResNet-50 (its status where the weights are absent) beside the paper's FID."""
    paper = load_reported(paper_dir, "medsyn2_table1")
    extractor = m.get("fd_self", {}).get("extractor", "")
    radimagenet = (m.get("windowed_pretrained") or {}).get("radimagenet_resnet50") or {}
    ours = {(r["window"], r["plane"]): r for r in radimagenet.get("rows", [])}
    rows = []
    for w in m.get("windowed", []):
        cell = ours.get((w["window"], w["plane"]))
        rows.append({"window": w["window"], "plane": w["plane"],
                     f"FD ({extractor})": measured(m, f"fd_window/{w['window']}", w.get("fd")),
                     "FID (RadImageNet ResNet-50)": fd_value({"v": {"value": cell.get("fd"), "status": cell.get(
                         "status")} if cell else {"status": radimagenet.get("status", NOT_MEASURED)}}, "v"),
                     "paper FID (RadImageNet ResNet-50)": reported(paper, "FID", model=paper_model, window=w["window"],
                                                                   plane=w["plane"]),
                     "scale": fd_scale(m)})
    return pd.DataFrame(rows)


def _objects(ours: Mapping[str, Mapping], paper: pd.DataFrame, **paper_match) -> list[str]:
    theirs = []
    if not paper.empty:
        sub = paper
        for k, v in paper_match.items():
            sub = sub[sub[k] == v]
        theirs = list(dict.fromkeys(sub["object"]))
    return list(ours) + [o for o in theirs if o not in ours]


def medsyn2_table6(reconstruction: pd.DataFrame, paper_dir: str | Path) -> pd.DataFrame:
    """MedSyn2 Table 6: masks reconstructed through the image tokenizer (VAE), Dice/Jaccard %, HD95/ASD voxels."""
    paper = load_reported(paper_dir, "medsyn2_table6")
    ours = {r["target"]: r for r in reconstruction.to_dict("records") if r["target"] != "image"}
    rows = []
    for obj in _objects(ours, paper):
        r = ours.get(obj)
        rows.append({"object": obj,
                     "dice (%)": measured_row(r, "dice", value_or_reason(r, "dice", 100.0), 100.0),
                     "paper dice (%)": reported(paper, "dice", object=obj),
                     "jaccard (%)": measured_row(r, "jaccard", value_or_reason(r, "jaccard", 100.0), 100.0),
                     "paper jaccard (%)": reported(paper, "jaccard", object=obj),
                     "hd95 (voxel)": measured_row(r, "hd95", value_or_reason(r, "hd95")),
                     "paper hd95 (voxel)": reported(paper, "hd95_voxel", object=obj),
                     "asd (voxel)": measured_row(r, "asd", value_or_reason(r, "asd")),
                     "paper asd (voxel)": reported(paper, "asd_voxel", object=obj),
                     "scale": f"{int(r['n_reference'])} test slices with the object" if r else ""})
    return pd.DataFrame(rows)


def medsyn2_table7(m: Mapping, reconstruction: pd.DataFrame, paper_dir: str | Path) -> pd.DataFrame:
    """MedSyn2 Table 7: re-segmented generated masks vs the conditioning (GT) masks, and the tokenizer's."""
    paper = load_reported(paper_dir, "medsyn2_table7")
    fidelity = m.get("mask_fidelity", {})
    unit = fidelity.get("distance_unit", "mm")
    recon = {r["target"]: r for r in reconstruction.to_dict("records") if r["target"] != "image"}
    comparisons = {"generated_vs_gt": fidelity.get("generated_vs_gt", {}), "real_resegmented_vs_gt":
                   fidelity.get("real_vs_gt", {}), "reconstructed_vs_gt": recon}
    prefixes = {"generated_vs_gt": "", "real_resegmented_vs_gt": "real_vs_gt/"}
    rows = []
    for comparison, ours in comparisons.items():
        for obj in _objects(ours, paper, comparison=comparison):
            r = ours.get(obj)

            def cell(key: str, scale: float = 1.0):  # with its interval: the metrics record's, or the VAE table's
                point = value_or_reason(r, key, scale)
                if comparison not in prefixes:
                    return measured_row(r, key, point, scale)
                return measured(m, f"{prefixes[comparison]}{key}/{obj}", point, scale)

            unit_of = "voxel" if comparison == "reconstructed_vs_gt" else unit
            rows.append({"object": obj, "comparison": comparison,
                         "dice (%)": cell("dice", 100.0),
                         "paper dice (%)": reported(paper, "dice", object=obj, comparison=comparison),
                         "jaccard (%)": cell("jaccard", 100.0),
                         "paper jaccard (%)": reported(paper, "jaccard", object=obj, comparison=comparison),
                         f"hd95 ({unit_of})": cell("hd95"),
                         "paper hd95 (mm)": reported(paper, "hd95_mm", object=obj, comparison=comparison),
                         f"asd ({unit_of})": cell("asd"),
                         "paper asd (mm)": reported(paper, "asd_mm", object=obj, comparison=comparison),
                         "segmenter": fidelity.get("segmenter", "") if comparison != "reconstructed_vs_gt" else "VAE"})
    return pd.DataFrame(rows)


def medsyn2_ablation(metrics: Mapping[str, Mapping], architectures: Mapping[str, Mapping]) -> pd.DataFrame:
    """MedSyn2 Supp. 7.5: one row per architecture (backbone switches, FD, mask fidelity, prompt control).

    ``architectures``: name -> the resolved backbone config (``extends`` applied).

    The paper shows these ablations as figures only (Supp. Fig. 13-15), so the paper column says so.
    """
    fd_name = _fd_self_name(list(metrics.values()))
    rows = []
    for arch, m in metrics.items():
        params = dict((architectures.get(arch) or {}).get("params") or {})
        fidelity = (m.get("mask_fidelity") or {}).get("mean_generated_vs_gt") or {}
        control = (m.get("controllability") or {}).get("generated", {})
        rows.append({"architecture": arch, "backbone": (architectures.get(arch) or {}).get("type", ""),
                     "depthwise_conv": params.get("depthwise_conv", ""),
                     "gated_attention": params.get("gated_attention", ""),
                     "run": m.get("run"), fd_name: fd_value(m, "fd_self"),
                     "mean Dice of re-segmented samples (%)": measured(m, "dice", value_or_reason(fidelity, "dice", 100.0),
                                                                        100.0),
                     "severity control accuracy": measured(m, "control_accuracy",
                                                            control.get("accuracy", NOT_MEASURED)),
                     "paper": "qualitative only (Supp. Fig. 13-15)", "scale": fd_scale(m)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ MAISI-v2
def maisi_steps(metrics: Sequence[Mapping], paper_dir: str | Path) -> pd.DataFrame:
    """MAISI-v2 steps ablation: FD vs sampler steps / NFE (every run of the sweep), paper FID_avg beside."""
    paper = load_reported(paper_dir, "maisi_v2_steps")
    fd_name = _fd_self_name(metrics)
    rows = []
    for m in metrics:
        s = m.get("sampling", {})
        steps = s.get("steps")
        rows.append({"model": m["model"], "sampler": s.get("sampler"), "steps": steps, "NFE": s.get("nfe"),
                     "network evals": s.get("network_evals"), fd_name: fd_value(m, "fd_self"),
                     "FID (InceptionV3)": fd_value(m, "fid"),
                     "paper FID_avg (rectified flow)": reported(paper, "FID_avg", steps=steps)
                     if s.get("sampler") == "euler" else "",
                     "seconds per sample": s.get("seconds_per_sample"), "scale": fd_scale(m)})
    return pd.DataFrame(rows)


#: MAISI-v2's FID_avg: RadImageNet ResNet-50 features, the mean over the XY / YZ / ZX planes of volumes
MAISI_FID = "FID_avg (RadImageNet ResNet-50)"


def maisi_main(metrics: Sequence[Mapping], paper_dir: str | Path) -> pd.DataFrame:
    """MAISI-v2 main results: method x steps x seconds x FD; the paper's rows are appended as published.

    ``FID_avg`` is the paper's extractor (RadImageNet, ``metrics.fd_recipes.radimagenet_resnet50``);
    InceptionV3's FID stands beside it under its own name."""
    paper = load_reported(paper_dir, "maisi_v2_main")
    fd_name = _fd_self_name(metrics)
    rows = []
    for m in metrics:
        s = m.get("sampling", {})
        rows.append({"source": "ours", "method": f"{m['model']} ({s.get('sampler')})", "steps": s.get("steps"),
                     "NFE": s.get("nfe"), "seconds per sample": s.get("seconds_per_sample"),
                     fd_name: fd_value(m, "fd_self"),
                     MAISI_FID: fd_value(m.get("fd_pretrained") or {}, "radimagenet_resnet50"),
                     "FID (InceptionV3)": fd_value(m, "fid"), "scale": fd_scale(m)})
    for r in paper.to_dict("records") if not paper.empty else []:
        rows.append({"source": "paper", "method": r["method"], "steps": r["steps"], "NFE": "",
                     "seconds per sample": r["seconds"], fd_name: "", MAISI_FID: r["FID_avg"],
                     "FID (InceptionV3)": "", "scale": "autoPET 2023, 512^3 (paper)"})
    return pd.DataFrame(rows)


def maisi_contrastive(metrics: Mapping[str, Mapping], roi: str, paper_dir: str | Path) -> pd.DataFrame:
    """MAISI-v2 region-specific contrastive loss off / on: FD, ROI fidelity and prompt control.

    ``metrics``: ``"off"`` / ``"on"`` -> metrics JSON. The paper reports the loss's settings
    (delta, lambda schedule) but no number for the ablation; those cells say so.
    """
    settings = load_reported(paper_dir, "maisi_v2_settings")
    fd_name = _fd_self_name(list(metrics.values()))
    rows = []
    for state, m in metrics.items():
        fidelity = (m.get("mask_fidelity") or {}).get("generated_vs_gt", {}).get(roi)
        control = (m.get("controllability") or {}).get("generated", {})
        rows.append({"contrastive": state, "model": m["model"], fd_name: fd_value(m, "fd_self"),
                     f"{roi} Dice of re-segmented samples (%)": measured(m, f"dice/{roi}",
                                                                          value_or_reason(fidelity, "dice", 100.0), 100.0),
                     f"{roi} HD95 (mm)": measured(m, f"hd95/{roi}", value_or_reason(fidelity, "hd95")),
                     "severity control accuracy": measured(m, "control_accuracy",
                                                            control.get("accuracy", NOT_MEASURED)),
                     "paper": NOT_REPORTED,
                     "paper delta": reported(settings, "value", item="contrastive_delta"),
                     "scale": fd_scale(m)})
    return pd.DataFrame(rows)


def maisi_hu_qc(metrics: Mapping[str, Mapping], paper_dir: str | Path) -> pd.DataFrame:
    """MAISI HU quality check: pass rate of each model's held-out samples (first attempt, after resampling)."""
    settings = load_reported(paper_dir, "maisi_v2_settings")
    rows = []
    for model, m in metrics.items():
        qc = m.get("hu_qc") or {}
        enabled = bool(qc.get("enabled"))
        why = qc.get("status", "HU quality check disabled (sampling.hu_qc.enabled)")
        rows.append({"model": model, "run": m["run"],
                     "pass rate, first attempt": measured(m, "hu_qc_first_pass_rate", qc["first_pass_rate"])
                     if enabled else why,
                     "pass rate": measured(m, "hu_qc_pass_rate", qc["pass_rate"]) if enabled else why,
                     "max tries": qc.get("max_tries", "") if enabled else "",
                     "mean tries": qc.get("mean_tries", "") if enabled else "",
                     "real slices' pass rate": measured(m, "hu_qc_real_pass_rate", qc.get("real_pass_rate", ""))
                     if enabled else "",
                     "bound rule": qc.get("method", "") if enabled else "",
                     "paper pass rate (final model)": reported(settings, "value",
                                                               item="hu_quality_check_pass_rate_final_model"),
                     "scale": fd_scale(m)})
    return pd.DataFrame(rows)


def meddiff_ft(evaluations: Mapping[str, Mapping], paper_dir: str | Path) -> pd.DataFrame:
    """MedDiff-FT: downstream Dice with synthetic data from real masks, from the stochastic mask generator,
    and with the feature-space quality filter + label erosion; gain over training on real slices."""
    summary = load_reported(paper_dir, "meddiff_ft_summary")
    base = evaluations.get("real", {}).get("mdsc")
    labels = {"real": "real only", "real_synth": "+ synthetic (real masks)",
              "real_synth_mg": "+ synthetic (stochastic mask generator)",
              "real_synth_mgf": "+ synthetic (mask generator, quality filter, mask erosion)",
              "real_synth_gm": "+ synthetic (guiding mask: ROI resynthesised in real slices)"}
    rows = []
    for setting, e in evaluations.items():
        kind = parse_setting(setting)[1]
        filt = e.get("meddiff_filter") or {}
        rows.append({"setting": setting, "what": labels.get(kind, kind),
                     "mDSC (%)": measured(e, "mdsc", value_or_reason(e, "mdsc", 100.0), 100.0),
                     "gain over real (points)": paired_gain(e, evaluations["real"], "mdsc",
                                                             100.0 * (e["mdsc"] - base), 100.0)
                     if base is not None and e.get("mdsc") is not None and kind != "real" else "",
                     f"mHD95 ({e.get('hd95_unit', 'mm')})": measured(e, "mhd95", value_or_reason(e, "mhd95")),
                     "synthetic kept by the filter": f"{filt['kept']} of {filt['of']}" if filt else "",
                     "paper mean Dice gain (%)": reported(summary, "value", item="mean_dice_gain_over_5_datasets_percent")
                     if kind == "real_synth_mgf" else "",
                     "scale": downstream_scale(e)})
    return pd.DataFrame(rows)
