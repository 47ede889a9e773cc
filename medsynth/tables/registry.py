"""Every paper table, registered once: its title and notes, the files it is built from and how.

The workflow has one table rule over a ``{table}`` wildcard (rules/tables.smk); its input function
and params come from the :class:`TableSpec` of that name, so adding a table is one entry here (and
its builder in :mod:`.builders`, or a module beside it: MedSyn2 Tables 2 / 3 in :mod:`.medsyn2_clip`,
Table 5 in :mod:`.medsyn2_table5`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from . import builders, maisi_downstream, meddiff_mean, medsyn2_clip, medsyn2_table5
from .builders import load_json

if TYPE_CHECKING:  # the study object is only passed in
    from medsynth.study import Study

__all__ = ["HEADLINE_TABLES", "PAPERS", "TableSpec", "TABLES", "built_tables", "table_input_files", "table_names",
           "table_params"]

Inputs = Callable[["Study"], dict[str, str]]
_REPLICA = re.compile(r"^(.+)@([1-9]\d*)$")  # the input key of a replicate's record (table_input_files)
Build = Callable[[dict, Mapping[str, str], Mapping], pd.DataFrame]


@dataclass(frozen=True)
class TableSpec:
    """One paper table: title and notes of its file, its inputs (named files) and its builder."""

    title: str
    notes: tuple[str, ...]
    inputs: Inputs
    #: (loaded JSON inputs by name, every input path by name, params) -> the table
    build: Build
    #: table-specific params (beside paper_dir) the builder reads, from the study
    params: Callable[["Study"], dict] = field(default=lambda study: {})
    #: whether the study has this table (the architecture ablation only with architectures)
    enabled: Callable[["Study"], bool] = field(default=lambda study: True)
    #: built only when asked for (by path, or by name in ``tables.build``): its inputs are other studies' outputs
    on_request: bool = False


def _victr_dataset(study: "Study") -> dict:
    return {"dataset": study.tables["victr_dataset"]}


def _victr_t2(study: "Study") -> list[dict]:
    """ViCTr Table 2's datasets (config `tables.victr_t2`; none: `victr_dataset` with vanilla and victr)."""
    rows = study.tables["victr_t2"] or [{"dataset": study.tables["victr_dataset"], "vanilla": "vanilla",
                                         "victr": "victr"}]
    return [dict(row) for row in rows]


def _medsyn2_model(study: "Study") -> dict:
    """The study's MedSyn2 2D model (config ``tables.medsyn2_model``) as the tables' params."""
    return {"model": study.tables["medsyn2_model"]}


def _medsyn2_table1(loaded, inputs, params):
    table = builders.medsyn2_table1(loaded[params["model"]], params["paper_dir"])
    if "volumes" in loaded:  # a 3D study: the volume generator's window x plane rows
        table = pd.concat([table.assign(data=f"2D slices ({params['model']})"),
                           builders.medsyn2_table1(loaded["volumes"], params["paper_dir"]).assign(data="3D volumes")],
                          ignore_index=True)
    return table


def _contrastive_roi(study: "Study") -> dict:
    on = study.model_config(study.tables["contrastive_on"])
    return {"contrastive_roi": on["contrastive"]["roi"]}


def _claims_file(study: "Study") -> str:
    return os.path.join(study.basedir, study.tables["claims"])


def _claims_inputs(study: "Study") -> dict[str, str]:
    """The claims file and every record its claims need that the study produces (the others: the claim's
    row says the study does not produce them)."""
    from medsynth.claims import load_claims, record_paths, study_roles

    settings = set(study.every_downstream_setting())
    tumour = set(study.tumour_records())
    paths = record_paths(load_claims(_claims_file(study), study_roles(study.tables)),
                         lambda model, run: study.metrics_json(model, run) if model in study.models else "",
                         lambda setting: study.downstream_json(setting) if setting in settings else "",
                         lambda task, setting: study.tumour_json(task, setting)
                         if f"{task}/{setting}" in tumour else "",
                         lambda reference: study.downstream_reference_json(reference))
    return {"claims": _claims_file(study), **{k: v for k, v in paths.items() if v}}


def _claims(loaded, inputs, params):
    from medsynth.claims import claims_table, load_claims

    return claims_table(load_claims(inputs["claims"], params["roles"]), loaded, params["paper_dir"])


def _claims_params(study: "Study") -> dict:
    from medsynth.claims import study_roles

    return {"roles": study_roles(study.tables)}


def _calibration_runs(study: "Study") -> dict[str, str | None]:
    """model -> run of the calibration table: the default variants, then ViCTr Table 4's rows (the one-step
    students with their own run; ``None``: the default run)."""
    runs: dict[str, str | None] = {m: None for m in study.default_variants}
    for row in study.tables["victr_t4"]:
        runs.setdefault(row["model"], row.get("run"))
    return {m: r for m, r in runs.items() if m in study.models}


def _calibration(loaded, inputs, params):
    from .calibration import calibration_table

    return calibration_table(loaded["calibration"], {m: loaded[m] for m in params["models"]})


def _meddiff_inputs(study: "Study") -> dict[str, str]:
    own = f"real_synth-{study.tables['meddiff_model']}"
    settings = [s for s in study.downstream_settings() if s.split("-")[0] in ("real_synth_mg", "real_synth_mgf",
                                                                              "real_synth_gm") or s == own]
    return {**{s: study.downstream_json(s) for s in settings}, "real": study.downstream_json("real")}


#: Table name -> its spec. The name is also the file stem: tables/<name>.csv and .md.
TABLES: dict[str, TableSpec] = {
    "claims": TableSpec(
        "Claims - does each headline claim of the four papers reproduce?",
        ("published effect: recomputed from the paper's own tables (config/paper_reported); published check: whether"
         " the number the text states follows from them.",
         "reproduced effect: the same comparison in this study (kind: difference a - b, ratio a / b or relative"
         " (a - b) / b), with the percentile bootstrap interval of the replicate effects, paired when both records"
         " were resampled alike (the same test slices, units and seed).",
         "verdict: reproduced when the whole interval lies on the claimed side (equivalence: inside the tolerance"
         " band), contradicted when it lies wholly on the other side (outside the band), otherwise not resolvable"
         " at this scale.",
         "With config replicates: 1 the intervals cover the sampling of the test set only (one trained model per"
         " record), not the spread between training seeds; with replicates: N > 1 each record pools N training seeds"
         " and its interval is a two-level bootstrap over seeds and test units.",
         "Claims are data: config tables.claims (config/claims.yaml); adding one needs no code."),
        inputs=_claims_inputs,
        build=_claims,
        params=_claims_params,
    ),
    "calibration": TableSpec(
        "Calibration - where each model sits between the floor and the ceiling of its metrics",
        ("Reference rows (rule calibration, config metrics.calibration) on the same held-out slices, with the same"
         " extractor and sample count as the models: the held-out slices themselves (the re-segmenter's own Dice),"
         " real training slices (other patients, or other slabs of the same patients with trainsets.slices.slabs),"
         " the VAE's reconstructions (the floor every decoded sample starts from), degraded copies (blur, noise, flip, uniform noise) and shuffled masks.",
         "Model rows: the default run of each default variant and of ViCTr Table 4's rows."),
        inputs=lambda s: {"calibration": f"{s.results}/metrics/calibration.json",
                          **{m: s.metrics_json(m, r) for m, r in _calibration_runs(s).items()}},
        build=_calibration,
        params=lambda s: {"models": list(_calibration_runs(s))},
    ),
    "victr_table2": TableSpec(
        "ViCTr Table 2 - image quality of vanilla fine-tuning vs ViCTr",
        ("FID needs torch-fidelity's InceptionV3 weights (config metrics.inception_pretrained_path, or"
         " weights-inception-2015-12-05-6726825d.pth in the torch hub cache); without them the cell says so.",
         "The paper's MFID uses M3D-CLIP features; ours is the Frechet distance on the encoder named in the column.",
         "seconds per sample: wall time of the sampler + VAE decoding on this run's device (not deterministic)."),
        inputs=lambda s: {builders.victr_t2_key(row[m], row.get(f"{m}_run")): s.metrics_json(row[m], row.get(f"{m}_run"))
                          for row in _victr_t2(s) for m in ("vanilla", "victr")},
        build=lambda loaded, inputs, p: builders.victr_table2(loaded, p["backbone"], p["paper_dir"], p["columns"]),
        params=lambda s: {"columns": _victr_t2(s), "backbone": s.config["generator"]["backbone"]["type"]},
    ),
    "victr_table3": TableSpec(
        "ViCTr Table 3 - downstream segmentation per training setting",
        ("mDSC / mHD95: means over the condition channels present in the real test slices (MONAI metrics).",),
        inputs=lambda s: {st: s.downstream_json(st) for st in s.downstream_settings()},
        build=lambda loaded, inputs, p: builders.victr_table3(loaded, p["downstream_name"], p["paper_dir"],
                                                              p["dataset"]),
        params=lambda s: {**_victr_dataset(s), "downstream_name": s.downstream["name"]},
    ),
    "victr_table4": TableSpec(
        "ViCTr Table 4 - ablations",
        ("Each row is one stage-2 variant (config `variants`), sampled with the study's default run; the one-step"
         " students (fsf: reflow couplings distilled into the one-step map; dmd: distribution matching"
         " distillation) with their one Euler step (column run).",),
        inputs=lambda s: {row["model"]: s.metrics_json(row["model"], row.get("run"))
                          for row in s.tables["victr_t4"]},
        build=lambda loaded, inputs, p: builders.victr_table4(p["rows"], loaded, p["paper_dir"]),
        params=lambda s: {"rows": list(s.tables["victr_t4"])},
    ),
    "medsyn2_table1": TableSpec(
        "MedSyn2 Table 1 - Frechet distance per CT window and plane",
        ("2D slices have only the axial (XY) plane; volumes (config `volumes`) have XY / YZ / ZX: the central 40 %"
         " of the slices along each axis (MAISI's 2.5D FID). The paper's extractor is RadImageNet ResNet-50.",),
        inputs=lambda s: {**s.volume_metrics_json(),
                          s.tables["medsyn2_model"]: s.metrics_json(s.tables["medsyn2_model"])},
        build=_medsyn2_table1,
        params=_medsyn2_model,
    ),
    "medsyn2_table2": TableSpec(
        "MedSyn2 Table 2 - CLIP score (%) of generated volumes: vs their report (T2I) and vs the real volume (I2I)",
        ("CLIP score: mean over volumes of 100 x cos(image, report) (T2I) or 100 x cos(generated, real volume of"
         " the same conditions) (I2I), each clipped at 0 (CLIPScore); the report is CT-RATE's Findings_EN +"
         " Impressions_EN as CT-CLIP's inference joins them.",
         "Ours: the 3D generator's default run (config volumes.run) on the held-out condition set; Real: the real"
         " volumes against their own reports. CT-CLIP needs metrics.ct_clip_pretrained_path and"
         " metrics.ct_clip_tokenizer_pretrained_path (CXR-BERT's vocab.txt); Pillar-0 has no loader here."),
        inputs=lambda s: s.volume_metrics_json(),
        build=lambda loaded, inputs, p: medsyn2_clip.medsyn2_table2(loaded.get("volumes"), p["paper_dir"]),
    ),
    "medsyn2_table3": TableSpec(
        "MedSyn2 Table 3 - CT-CLIP zero-shot classification of the 18 CT-RATE abnormalities (x 100)",
        ("CT-CLIP's recipe: prompts '<abnormality> is present.' / '... is not present.', softmax of the two, a"
         " threshold per abnormality nearest the ROC corner on the evaluated set; accuracy, precision, AUROC and"
         " weighted F1 averaged over the abnormalities with both classes in the labels.",
         "Labels: CT-RATE's multi_abnormality_labels of each real case (columns abnormality_<name> of the"
         " training-set index, config datasets[].layout.labels_csv); without them the cells say so."),
        inputs=lambda s: s.volume_metrics_json(),
        build=lambda loaded, inputs, p: medsyn2_clip.medsyn2_table3(loaded.get("volumes"), p["paper_dir"]),
    ),
    "medsyn2_table5": TableSpec(
        "MedSyn2 Table 5 - segmentation with real / synthesized / combined training data",
        ("Reference rows: a pretrained segmenter scored off the shelf on the same test slices (rule"
         " downstream_reference, config downstream.tasks.<task>.references); a paper row none of them computes"
         " says so.",),
        inputs=medsyn2_table5.table5_inputs,
        build=lambda loaded, inputs, p: medsyn2_table5.medsyn2_table5(loaded, p["paper_dir"], p["references"]),
        params=medsyn2_table5.table5_params,
    ),
    "medsyn2_table6": TableSpec(
        "MedSyn2 Table 6 - masks reconstructed through the image tokenizer (VAE)",
        ("Objects are the study's condition channels; the paper's objects are chest CT structures.",),
        inputs=lambda s: {"reconstruction": f"{s.results}/vae/reconstruction.csv"},
        build=lambda loaded, inputs, p: builders.medsyn2_table6(pd.read_csv(inputs["reconstruction"]),
                                                                p["paper_dir"]),
    ),
    "medsyn2_table7": TableSpec(
        "MedSyn2 Table 7 - masks re-segmented from generated images",
        ("generated_vs_gt: the re-segmenter on generated images vs the masks they were conditioned on;"
         " real_resegmented_vs_gt: the same re-segmenter on the real images (its own error floor).",),
        inputs=lambda s: {s.tables["medsyn2_model"]: s.metrics_json(s.tables["medsyn2_model"]),
                          "reconstruction": f"{s.results}/vae/reconstruction.csv"},
        build=lambda loaded, inputs, p: builders.medsyn2_table7(loaded[p["model"]], pd.read_csv(inputs["reconstruction"]),
                                                                p["paper_dir"]),
        params=_medsyn2_model,
    ),
    "medsyn2_ablation": TableSpec(
        "MedSyn2 Supp. 7.5 - DiT depthwise convolution and gated attention on / off",
        ("Each row is a generator trained from scratch with the same recipe (config `base` +"
         " `architecture_training`) and the backbone of config `architectures.<name>`.",),
        inputs=lambda s: {arch: s.metrics_json(arch) for arch in s.architectures},
        build=lambda loaded, inputs, p: builders.medsyn2_ablation(loaded, p["architectures"]),
        params=lambda s: {"architectures": {a: s.architecture_backbone(a) for a in s.architectures}},
        enabled=lambda s: bool(s.architectures),
    ),
    "maisi_steps": TableSpec(
        "MAISI-v2 steps ablation - Frechet distance vs sampler steps (FD-vs-NFE)",
        (),
        inputs=lambda s: {run: s.metrics_json(s.steps_model(), run) for run in s.sampling["steps_runs"]},
        build=lambda loaded, inputs, p: builders.maisi_steps(list(loaded.values()), p["paper_dir"]),
    ),
    "maisi_main": TableSpec(
        "MAISI-v2 main results - method x steps x seconds",
        ("seconds per sample: wall time on this run's device (not deterministic); the paper's are on an A100"
         " at 512^3.",
         "FID_avg: RadImageNet ResNet-50 features with MAISI's 2.5D recipe (config metrics.fd_recipes,"
         " metrics.radimagenet_pretrained_path); without the weights the cell says so."),
        inputs=lambda s: {f"{r['model']}/{r['run']}": s.metrics_json(r["model"], r["run"])
                          for r in s.tables["maisi_main"]},
        build=lambda loaded, inputs, p: builders.maisi_main(list(loaded.values()), p["paper_dir"]),
    ),
    "maisi_contrastive": TableSpec(
        "MAISI-v2 region-specific contrastive loss - off vs on",
        ("ROI = config stage2.contrastive.roi; its Dice / HD95 come from re-segmenting the generated held-out"
         " samples.",
         "MAISI-v2 gives the loss's settings (delta 2, lambda 0.01 then 0.001) but no ablation number."),
        inputs=lambda s: {"off": s.metrics_json(s.tables["contrastive_off"]),
                          "on": s.metrics_json(s.tables["contrastive_on"])},
        build=lambda loaded, inputs, p: builders.maisi_contrastive({"off": loaded["off"], "on": loaded["on"]},
                                                                   p["contrastive_roi"], p["paper_dir"]),
        params=_contrastive_roi,
    ),
    "maisi_hu_qc": TableSpec(
        "MAISI HU quality check - organ median HU within bounds from the real training slices",
        ("A held-out sample passes when the median HU of every organ of its conditioning mask is inside that"
         " organ's bounds; failures are resampled from fresh noise up to `max tries` attempts.",
         "The real slices' pass rate is the same check on the real test slices (the bounds' own fit)."),
        inputs=lambda s: {m: s.metrics_json(m) for m in s.tables["hu_qc_models"]},
        build=lambda loaded, inputs, p: builders.maisi_hu_qc(loaded, p["paper_dir"]),
    ),
    "maisi_downstream": TableSpec(
        "MAISI-v2 downstream tumour segmentation - Dice with real vs real + generated volumes (3D path)",
        ("Per tumour type (config volumes.downstream.tasks): a 3D SegResNet trained on the task's real training"
         " volumes, or on them plus one volume generated from each one's masks; Dice of the ROI on the real"
         " test volumes (mean over cases).",
         "The 3D path's generator is MAISI's released rectified-flow UNet + ControlNet fine-tuned with rectified"
         " flow: the paper's 'MAISI-v2' row with the region-specific contrastive loss (volumes.contrastive),"
         " its 'ControlNet only' row without.",
         "The paper's gains are Dice points over real only; 'paper gain' is its Dice minus its real-only Dice"
         " (its printed gains differ from these by up to 0.1 point: rounding)."),
        inputs=lambda s: s.tumour_records(),
        build=lambda loaded, inputs, p: maisi_downstream.maisi_downstream(loaded, p["paper_dir"], p["contrastive"]),
        params=lambda s: {"contrastive": bool(s.volumes["contrastive"]["enabled"])},
        enabled=lambda s: bool(s.tumour_tasks()),  # a study with tumour data (config volumes.downstream.tasks)
    ),
    "meddiff_ft": TableSpec(
        "MedDiff-FT - segmentation with synthetic data from generated masks, filtered",
        ("The paper gives one number (abstract): +1.0 % mean Dice over five datasets, for its full pipeline.",
         "Filter: Mahalanobis distance of the self-trained encoder's features to the real training slices'."),
        inputs=_meddiff_inputs,
        build=lambda loaded, inputs, p: builders.meddiff_ft(loaded, p["paper_dir"]),
    ),
    "meddiff_ft_mean": TableSpec(
        "MedDiff-FT - mean Dice gain of the full pipeline over the five benchmark studies",
        ("Each benchmark is its own study (tables.meddiff_benchmarks); built on request once they have run.",),
        inputs=lambda s: meddiff_mean.benchmark_tables(s.results, list(s.tables["meddiff_benchmarks"])),
        build=lambda loaded, inputs, p: meddiff_mean.meddiff_mean(inputs, p["model"], p["paper_dir"]),
        params=lambda s: {"model": s.tables["meddiff_model"]},
        enabled=lambda s: bool(s.tables["meddiff_benchmarks"]),
        on_request=True,
    ),
}


#: the paper of each table (its name's prefix), the names ``tables.build`` takes beside table names
PAPERS = ("victr", "medsyn2", "maisi", "meddiff")
#: the tables the report opens with (rule headline_table, report category "Claims and calibration")
HEADLINE_TABLES = ("claims", "calibration")


def table_names(study: "Study") -> list[str]:
    """The tables this study can build (any of them on request), in registry order."""
    return [name for name, spec in TABLES.items() if spec.enabled(study)]


def built_tables(study: "Study") -> list[str]:
    """The tables ``snakemake`` builds by default (config ``tables.build``: ``all``, papers, table names)."""
    wanted = list(study.tables["build"])
    unknown = [w for w in wanted if w != "all" and w not in PAPERS and w not in TABLES]
    if unknown:
        raise ValueError(f"tables.build: unknown {unknown}; give all, a paper ({', '.join(PAPERS)}) or a table "
                         f"({', '.join(TABLES)})")
    names = table_names(study)
    named = [n for n in names if n in wanted]  # an on-request table is built by default only when named
    names = [n for n in names if not TABLES[n].on_request or n in named]
    if "all" in wanted:
        return names
    disabled = [w for w in wanted if w in TABLES and w not in names]
    if disabled:
        raise ValueError(f"tables.build names {disabled}, which this study cannot build (e.g. medsyn2_ablation "
                         "needs architectures)")
    # the claims and calibration tables come with any paper's tables: the report opens with them
    return [n for n in names if n in wanted or n.split("_")[0] in wanted
            or (n in HEADLINE_TABLES and set(wanted) & set(PAPERS))]


def table_input_files(name: str, study: "Study") -> dict[str, str]:
    """The named input files of table ``name``: its spec's, plus ``<key>@k`` for replicate k of each record of
    a replicated model (config ``replicates``; :func:`build_table` pools them back into ``<key>``)."""
    inputs = TABLES[name].inputs(study)
    out = dict(inputs)
    for key, path in inputs.items():
        for k, other in enumerate(study.replicate_paths(path)[1:], start=1):
            out[f"{key}@{k}"] = other
    return out


def _pooled(loaded: Mapping[str, dict]) -> dict[str, dict]:
    """``loaded`` with each record's replicates (``<key>@k``) pooled into ``<key>`` (:func:`medsynth.stats.pool_records`)."""
    from medsynth.stats import pool_records

    groups: dict[str, dict[int, dict]] = {}
    for key, record in loaded.items():
        m = _REPLICA.match(key)
        groups.setdefault(m[1] if m else key, {})[int(m[2]) if m else 0] = record
    return {key: pool_records([by_k[k] for k in sorted(by_k)]) for key, by_k in groups.items()}


def table_params(name: str, study: "Study") -> dict:
    """Params of the table rule for ``name``: where the published values are, and the spec's own."""
    paper_dir = os.path.join(study.basedir, study.tables["paper_reported"])
    return {"paper_dir": paper_dir, **TABLES[name].params(study)}


def build_table(name: str, inputs: Mapping[str, str], params: Mapping) -> pd.DataFrame:
    """The table ``name`` from its input files (the rule's named inputs) and the rule's params."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}")
    loaded = _pooled({k: load_json(v) for k, v in inputs.items() if str(v).endswith(".json")})
    inputs = {k: v for k, v in inputs.items() if not _REPLICA.match(k)}
    return TABLES[name].build(loaded, inputs, params)
