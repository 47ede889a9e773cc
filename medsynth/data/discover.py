"""Find the cases of a dataset in its folder: one row per image volume, 2D picture or DICOM series.

Shipped datasets list their cases explicitly (``cases:`` in the registry). Other datasets describe
a ``layout``: globs for image files, an optional label-map pattern, an optional CSV of prompt
fields (e.g. a report or a pathology grade), an optional CSV of per-case labels (columns
``abnormality_<name>``, e.g. CT-RATE's abnormality labels), how to read the patient id from the case
id, and the modality. DICOM series anywhere under the folder are found by their headers; a series' patient id is
its PatientID, else its StudyInstanceUID, else its SeriesInstanceUID (column ``patient_id_source``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from medsynth.io.dicom import find_series
from medsynth.io.image2d import PICTURE, is_image2d_file
from medsynth.io.volume import VOLUME_SUFFIXES, is_volume_file, volume_stem

SOURCE_COLUMNS = [
    "case_id", "patient_id", "dataset", "modality", "source_kind", "source", "series_uid", "label", "split",
]
DEFAULT_IMAGE_GLOBS = [f"**/*{s}" for s in VOLUME_SUFFIXES]


def safe_id(text: str) -> str:
    """A file-name-safe identifier (letters, digits, ``-``, ``_``, ``.``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "case"


def portable_path(path: str) -> str:
    """``path`` relative to the working folder when it lies inside it, else unchanged."""
    if not path:
        return path
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path


def _source_kind(path: Path) -> str:
    name = path.name.lower()
    if is_image2d_file(name):
        return PICTURE
    return "nifti" if name.endswith((".nii", ".nii.gz")) else "itk"


def _patient_id(case_stem: str, layout: dict) -> str:
    pattern = layout.get("patient_id_regex")
    if pattern:
        match = re.search(pattern, case_stem)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return case_stem


def _first_match(mapping: dict | None, text: str, default: str) -> str:
    """Value of the first regex key of ``mapping`` found in ``text``."""
    for pattern, value in (mapping or {}).items():
        if re.search(pattern, text):
            return value
    return default


#: joins the label files of one case in the sources table (e.g. BUSI's multifocal masks)
LABEL_SEPARATOR = ";"


def _substitute(spec: dict, rel: str) -> str:
    """``spec``'s regex substitutions on ``rel``: one ``from`` / ``to`` pair, or lists of them applied in turn."""
    froms, tos = spec["from"], spec["to"]
    if isinstance(froms, str):
        froms, tos = [froms], [tos]
    if len(froms) != len(tos):
        raise ValueError(f"layout.labels: {len(froms)} 'from' patterns but {len(tos)} 'to' replacements")
    for pattern, replacement in zip(froms, tos):
        rel = re.sub(pattern, replacement, rel)
    return rel


def _labels_for(image: Path, root: Path, spec) -> list[Path]:
    """Existing label files of ``image``. ``spec``: a pattern with {stem}/{case} (relative to root), a regex
    {from, to} on the relative path (lists: substitutions in turn), or a list of those (every existing file
    is a part of the case's labels)."""
    if not spec:
        return []
    if isinstance(spec, list):
        return list(dict.fromkeys(p for part in spec for p in _labels_for(image, root, part)))
    if isinstance(spec, dict):
        rel = image.relative_to(root).as_posix()
        new = _substitute(spec, rel)
        found = None if new == rel else root / new
    else:
        stem = volume_stem(image)
        found = root / spec.format(case=stem, stem=stem)
    return [found] if found is not None and found != image and found.exists() else []


#: the case-table columns of ``layout.labels_csv``: ``abnormality_<their column>`` (0 / 1 per case)
LABEL_COLUMN_PREFIX = "abnormality_"


def _read_prompts(root: Path, layout: dict, kind: str = "prompts") -> pd.DataFrame | None:
    """``layout.<kind>_csv`` (one file or a list) indexed by case stem (``layout.<kind>_id_column``; labels:
    default the prompts' id column)."""
    csvs = layout.get(f"{kind}_csv")
    if not csvs:
        return None
    tables = []
    id_column = layout.get(f"{kind}_id_column") or layout.get("prompts_id_column", "case_id")
    for csv in [csvs] if isinstance(csvs, str) else csvs:
        path = Path(csv) if Path(csv).is_absolute() else root / csv
        if not path.exists():
            raise FileNotFoundError(f"{kind} CSV {path} (layout.{kind}_csv) does not exist")
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        if id_column not in table.columns:
            raise ValueError(f"{kind} CSV {path} has no column {id_column!r} (layout.{kind}_id_column)")
        tables.append(table)
    table = pd.concat(tables, ignore_index=True).rename(columns={id_column: "_stem"})
    table["_stem"] = table["_stem"].map(volume_stem)
    return table.drop_duplicates("_stem").set_index("_stem")


def discover_example(entry: dict, root: Path) -> pd.DataFrame:
    """Cases listed explicitly in the registry entry."""
    rows = []
    for case in entry.get("cases", []):
        row = {
            "case_id": safe_id(f"{entry['name']}_{case['id']}"),
            "patient_id": str(case.get("patient_id", case["id"])),
            "dataset": entry["name"],
            "modality": case["modality"],
            "source_kind": _source_kind(Path(case["image"])),
            "source": str(root / case["image"]),
            "series_uid": "",
            "label": str(root / case["label"]) if case.get("label") else "",
        }
        for key, value in (case.get("prompt") or {}).items():
            row[f"prompt_{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def discover_layout(entry: dict, root: Path) -> pd.DataFrame:
    """Cases found in ``root`` by the entry's ``layout`` (volume files, 2D pictures and DICOM series).

    2D pictures (PNG, JPEG, BMP, TIFF) are cases only where ``layout.images`` names them: the default
    globs find volumes."""
    layout = entry.get("layout") or {}
    exclude = layout.get("exclude") or []
    candidates: dict[Path, None] = {}
    readable = is_volume_file if not layout.get("images") else (lambda p: is_volume_file(p) or is_image2d_file(p))
    for pattern in layout.get("images") or DEFAULT_IMAGE_GLOBS:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and readable(path) and not any(path.match(x) for x in exclude):
                candidates[path] = None
    labels = {path: found for path in candidates if (found := _labels_for(path, root, layout.get("labels")))}
    label_files = {p for found in labels.values() for p in found}
    default_modality = layout.get("modality", "CT")
    rows = []
    for path in candidates:
        if path in label_files:
            continue
        stem = path.parent.name if layout.get("case_id_from") == "parent" else volume_stem(path)
        rel = path.relative_to(root).as_posix()
        rows.append({
            "stem": stem, "patient_id": _patient_id(stem, layout),
            "modality": _first_match(layout.get("modality_map"), rel, default_modality),
            "source_kind": _source_kind(path), "source": str(path), "series_uid": "",
            "label": LABEL_SEPARATOR.join(str(p) for p in labels.get(path, [])), "split": _first_match(layout.get("split_map"), rel, ""),
        })
    if layout.get("dicom", True):
        allowed = layout.get("dicom_modalities") or ["CT", "MR"]
        claimed = set(candidates) | label_files
        others = [p for p in sorted(root.rglob("*")) if p.is_file() and p not in claimed and not p.name.endswith(".csv")]
        for series in find_series(others):
            if series.modality not in allowed:
                continue
            patient_id, patient_id_source = series.patient
            rows.append({
                "stem": _series_stem(series.patient_id, series.series_number, series.series_uid),
                "patient_id": patient_id, "patient_id_source": patient_id_source, "modality": series.modality,
                "source_kind": "dicom", "source": str(series.folder),
                "series_uid": series.series_uid, "label": "", "split": "",
            })
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=SOURCE_COLUMNS)
    table["case_id"] = _deduplicate([safe_id(f"{entry['name']}_{s}") for s in table["stem"]])
    if "patient_id_source" in table.columns:  # volume files: the patient id comes from the case id
        table["patient_id_source"] = table["patient_id_source"].fillna("")
    table["dataset"] = entry["name"]
    prompts = _read_prompts(root, layout)
    if prompts is not None:
        renames = {v: k for k, v in (layout.get("prompt_columns_as") or {}).items()}
        joined = prompts.reindex(table["stem"]).fillna("")
        for column in joined.columns:
            values = joined[column].tolist()
            target = renames.get(column, column)
            if target in ("modality", "patient_id", "split"):
                if target == "patient_id" and "patient_id_source" in table.columns:
                    table["patient_id_source"] = ["prompts_csv" if v else old
                                                  for v, old in zip(values, table["patient_id_source"])]
                table[target] = [v or old for v, old in zip(values, table[target])]
            elif target in ("rescale_slope", "rescale_intercept"):
                table[target] = values
            else:
                table[f"prompt_{target}"] = values
    labels = _read_prompts(root, layout, "labels")
    if labels is not None:  # e.g. CT-RATE's 18 abnormality labels; "" where a case has no row
        joined = labels.reindex(table["stem"]).fillna("")
        for column in joined.columns:
            table[f"{LABEL_COLUMN_PREFIX}{column}"] = joined[column].tolist()
    return table.drop(columns=["stem"])


def _series_stem(patient_id: str, series_number: str, series_uid: str) -> str:
    """A DICOM series' case name: patient and series number, ``anon`` / the series UID's tail where they are missing."""
    return safe_id(f"{patient_id or 'anon'}_{series_number or series_uid[-8:]}")


def _deduplicate(ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for case_id in ids:
        n = seen.get(case_id, 0)
        seen[case_id] = n + 1
        out.append(case_id if n == 0 else f"{case_id}-{n + 1}")
    return out


def discover_cases(entry: dict, root: str | Path) -> pd.DataFrame:
    """The sources table of one dataset (columns ``SOURCE_COLUMNS`` plus ``prompt_*`` / ``abnormality_*`` /
    ``split``)."""
    root = Path(root)
    table = discover_example(entry, root) if entry["kind"] == "example" else discover_layout(entry, root)
    for column in SOURCE_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    ordered = SOURCE_COLUMNS + [c for c in table.columns if c not in SOURCE_COLUMNS]
    return table[ordered].sort_values("case_id").reset_index(drop=True)
