"""Paper tables: measured values beside the published ones (one CSV + Markdown file per table)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from . import builders
from .builders import load_json
from .paper import load_reported, reported
from .render import NOT_MEASURED, NOT_REPORTED, write_table

__all__ = ["TABLES", "NOT_MEASURED", "NOT_REPORTED", "build_table", "load_reported", "reported", "write_table"]

#: Table name -> (title, notes). The name is also the rule and the file stem.
TABLES = {
    "victr_table2": ("ViCTr Table 2 - image quality of vanilla fine-tuning vs ViCTr", [
        "FID needs torch-fidelity's InceptionV3 weights (config metrics.inception_weights, or"
        " weights-inception-2015-12-05-6726825d.pth in the torch hub cache); without them the cell says so.",
        "The paper's MFID uses M3D-CLIP features; ours is the Frechet distance on the encoder named in the column.",
        "seconds per sample: wall time of the sampler + VAE decoding on this run's device (not deterministic).",
    ]),
    "victr_table3": ("ViCTr Table 3 - downstream segmentation per training setting", [
        "mDSC / mHD95: means over the condition channels present in the real test slices (MONAI metrics).",
    ]),
    "victr_table4": ("ViCTr Table 4 - ablations", [
        "Each row is one stage-2 variant (config `variants`), sampled with the study's default run; the one-step"
        " students (fsf: reflow couplings distilled into the one-step map; dmd: distribution matching"
        " distillation) with their one Euler step (column run).",
    ]),
    "medsyn2_table1": ("MedSyn2 Table 1 - Frechet distance per CT window and plane", [
        "2D slices have only the axial (XY) plane; volumes (config `volumes`) have XY / YZ / ZX: the central 40 %"
        " of the slices along each axis (MAISI's 2.5D FID). The paper's extractor is RadImageNet ResNet-50.",
    ]),
    "medsyn2_table5": ("MedSyn2 Table 5 - segmentation with real / synthesized / combined training data", []),
    "medsyn2_table6": ("MedSyn2 Table 6 - masks reconstructed through the image tokenizer (VAE)", [
        "Objects are the study's condition channels; the paper's objects are chest CT structures.",
    ]),
    "medsyn2_table7": ("MedSyn2 Table 7 - masks re-segmented from generated images", [
        "generated_vs_gt: the re-segmenter on generated images vs the masks they were conditioned on;"
        " real_resegmented_vs_gt: the same re-segmenter on the real images (its own error floor).",
    ]),
    "medsyn2_ablation": ("MedSyn2 Supp. 7.5 - DiT depthwise convolution and gated attention on / off", [
        "Each row is a generator trained from scratch with the same recipe (config `base` +"
        " `architecture_training`) and the backbone of config `architectures.<name>`.",
    ]),
    "maisi_steps": ("MAISI-v2 steps ablation - Frechet distance vs sampler steps (FD-vs-NFE)", []),
    "maisi_contrastive": ("MAISI-v2 region-specific contrastive loss - off vs on", [
        "ROI = config stage2.contrastive.roi; its Dice / HD95 come from re-segmenting the generated held-out samples.",
        "MAISI-v2 gives the loss's settings (delta 2, lambda 0.01 then 0.001) but no ablation number.",
    ]),
    "maisi_hu_qc": ("MAISI HU quality check - organ median HU within bounds from the real training slices", [
        "A held-out sample passes when the median HU of every organ of its conditioning mask is inside that organ's"
        " bounds; failures are resampled from fresh noise up to `max tries` attempts.",
        "The real slices' pass rate is the same check on the real test slices (the bounds' own fit).",
    ]),
    "meddiff_ft": ("MedDiff-FT - segmentation with synthetic data from generated masks, filtered", [
        "The paper gives one number (abstract): +1.0 % mean Dice over five datasets, for its full pipeline.",
        "Filter: Mahalanobis distance of the self-trained encoder's features to the real training slices'.",
    ]),
    "maisi_main": ("MAISI-v2 main results - method x steps x seconds", [
        "seconds per sample: wall time on this run's device (not deterministic); the paper's are on an A100 at 512^3.",
    ]),
}


def build_table(name: str, inputs: Mapping[str, str], params: Mapping) -> pd.DataFrame:
    """The table ``name`` from its input files (the rule's named inputs) and rule params."""
    paper_dir = params["paper_dir"]
    tables_cfg = params.get("tables") or {}
    dataset = tables_cfg.get("victr_dataset", "BTCV")
    loaded = {k: load_json(v) for k, v in inputs.items() if str(v).endswith(".json")}
    if name == "victr_table2":
        return builders.victr_table2(loaded, params["backbone"], paper_dir, dataset)
    if name == "victr_table3":
        return builders.victr_table3(loaded, params.get("downstream_name", "UNet"), paper_dir, dataset)
    if name == "medsyn2_ablation":
        return builders.medsyn2_ablation(loaded, params.get("architectures") or {})
    if name == "victr_table4":
        return builders.victr_table4(tables_cfg.get("victr_t4", []), loaded, paper_dir)
    if name == "medsyn2_table1":
        table = builders.medsyn2_table1(loaded["victr"], paper_dir)
        if "volumes" in loaded:  # a 3D study: the volume generator's window x plane rows
            table = pd.concat([table.assign(data="2D slices (victr)"),
                               builders.medsyn2_table1(loaded["volumes"], paper_dir).assign(data="3D volumes")],
                              ignore_index=True)
        return table
    if name == "medsyn2_table5":
        return builders.medsyn2_table5(loaded, paper_dir)
    if name == "medsyn2_table6":
        return builders.medsyn2_table6(pd.read_csv(inputs["reconstruction"]), paper_dir)
    if name == "medsyn2_table7":
        return builders.medsyn2_table7(loaded["victr"], pd.read_csv(inputs["reconstruction"]), paper_dir)
    if name == "maisi_steps":
        return builders.maisi_steps(list(loaded.values()), paper_dir)
    if name == "maisi_main":
        return builders.maisi_main(list(loaded.values()), paper_dir)
    if name == "meddiff_ft":
        return builders.meddiff_ft(loaded, paper_dir)
    if name == "maisi_hu_qc":
        return builders.maisi_hu_qc(loaded, paper_dir)
    if name == "maisi_contrastive":
        roi = params.get("contrastive_roi", "liver")
        return builders.maisi_contrastive({"off": loaded["off"], "on": loaded["on"]}, roi, paper_dir)
    raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}")


def make_table(name: str, inputs: Mapping[str, str], params: Mapping, csv_path: str | Path, md_path: str | Path) -> None:
    """Build table ``name`` and write its CSV and Markdown."""
    title, notes = TABLES[name]
    write_table(build_table(name, inputs, params), csv_path, md_path, title, notes)
