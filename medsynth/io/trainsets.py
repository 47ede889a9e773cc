"""The file format of a training-set shard (rule ``training_sets``), for its writer and every reader.

One shard of cases -> one ``.safetensors`` file (tensors ``image`` float16 in [-1, 1], ``masks`` uint8
binary channels, the metadata key ``medsynth``: ``{"conditions": [...], "masks_encoding": ...}``) and one
index CSV of the same stem (a row per sample: case, split, modality, slice, the organs present, every
prompt field of the manifest, and ``sample``, its position in the tensors). Masks are binary on disk;
readers map them to the models' values [-0.5, 0.5] with :func:`to_condition_values`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from medsynth.fsutil import atomic_path, write_csv_atomic

__all__ = ["Slices", "both_selections", "consecutive_runs", "iter_slices", "join_slices", "load_rows", "load_shard", "load_slices",
           "read_index", "read_stored_rows", "select_rows", "shard_condition_names", "shard_indexes",
           "to_condition_values", "write_shard"]

Slices = tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]  # (index, images, masks, names): load_slices' result


def to_condition_values(binary: np.ndarray) -> np.ndarray:
    """Binary masks -> model values: background -0.5, foreground +0.5 (float32)."""
    return np.asarray(binary, dtype=np.float32) - 0.5


def write_shard(samples: list[tuple[dict, np.ndarray, np.ndarray]], condition_names: list[str], tensors_path: Path,
                index_path: Path, columns: Sequence[str] = ()) -> pd.DataFrame:
    """Write (index row, image, masks) samples as one safetensors shard + its index CSV (atomically).

    ``columns`` are the index's columns, written as the header of a shard without samples.
    """
    rows = [dict(row, sample=i) for i, (row, _, _) in enumerate(samples)]
    n_channels = len(condition_names)
    if samples:
        images = np.stack([s[1] for s in samples]).astype(np.float16)
        masks = np.stack([s[2] for s in samples]).astype(np.uint8)
    else:
        images = np.zeros((0, 1, 1, 1), np.float16)
        masks = np.zeros((0, n_channels, 1, 1), np.uint8)
    with atomic_path(tensors_path, suffix=".safetensors") as tmp:
        # one metadata key: safetensors writes several in arbitrary order, which would break byte-identical reruns
        meta = json.dumps({"conditions": condition_names, "masks_encoding": "binary uint8; model values = mask - 0.5"},
                          sort_keys=True)
        save_file({"image": images, "masks": masks}, str(tmp), metadata={"medsynth": meta})
    index = pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*columns, "sample"])
    write_csv_atomic(index, index_path)
    return index


def load_shard(tensors_path: str | Path) -> dict[str, np.ndarray]:
    """Read a shard: ``image`` float32 in [-1, 1] and ``masks`` float32 in [-0.5, 0.5]."""
    data = load_file(str(tensors_path))
    return {"image": data["image"].astype(np.float32), "masks": to_condition_values(data["masks"])}


def consecutive_runs(samples: np.ndarray) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of the runs of consecutive values of the sorted unique ``samples`` (none if empty)."""
    if not len(samples):
        return
    breaks = np.flatnonzero(np.diff(samples) != 1) + 1
    for run in np.split(samples, breaks):
        yield int(run[0]), int(run[-1]) + 1


def read_stored_rows(view: Any, samples: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rows ``samples`` (any order, repeats allowed, numpy's negative positions) of a shard tensor ``view``
    (``safe_open(path, framework="np").get_slice(name)``), as stored (dtype of the file): one read per run of
    consecutive samples, no other row read; bit for bit ``load_file(path)[name][samples]``."""
    samples = np.asarray(samples, dtype=np.int64).reshape(-1)
    n = int(view.get_shape()[0])
    if len(samples) and (samples.min() < -n or samples.max() >= n):
        raise IndexError(f"sample rows {samples.min()}..{samples.max()} out of range for {n} stored rows")
    samples = np.where(samples < 0, samples + n, samples)
    unique = np.unique(samples)
    runs = list(consecutive_runs(unique))
    if not runs:
        return view[0:0]
    stored = view[runs[0][0]:runs[0][1]] if len(runs) == 1 else np.concatenate([view[a:b] for a, b in runs])
    if len(unique) == len(samples) and np.array_equal(unique, samples):
        return stored  # sorted, no repeats: the rows as read
    return stored[np.searchsorted(unique, samples)]


def shard_condition_names(tensors_path: str | Path) -> list[str]:
    """Condition-channel names stored in a shard's safetensors metadata."""
    with safe_open(str(tensors_path), framework="np") as fh:
        raw = fh.metadata() or {}
    if "medsynth" in raw:
        return list(json.loads(raw["medsynth"]).get("conditions", []))
    return [n for n in raw.get("conditions", "").split(",") if n]  # shards written before the single-key metadata


def shard_indexes(shards: Sequence[str | Path]) -> Iterator[tuple[str, pd.DataFrame, list[str]]]:
    """``(path, index, condition names)`` of each shard with samples, in path order (the ``.safetensors`` of
    ``shards``; the index is the same stem ``.csv``); every shard must have the same condition channels."""
    names = None
    for path in sorted(str(p) for p in shards if str(p).endswith(".safetensors")):
        index = pd.read_csv(Path(path).with_suffix(".csv"), dtype={"split": str, "modality": str},
                            keep_default_na=False)
        if not len(index):
            continue
        shard_names = shard_condition_names(path)
        if names is None:
            names = shard_names
        elif shard_names != names:
            raise ValueError(f"{path}: condition channels {shard_names} differ from {names}")
        yield path, index, list(names)


def iter_slices(shards: Sequence[str | Path], select: Mapping[str, Sequence] | None = None
                ) -> Iterator[tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]]:
    """The samples of the shards kept by ``select`` (:func:`select_rows`), one shard at a time (in path order;
    shards with nothing selected are skipped; only the selected rows read, :func:`read_stored_rows`), so that a
    consumer holds one shard's selected images at once:
    ``(index, images, masks, names)`` per shard, as :func:`load_slices` returns them for all."""
    for path, index, names in shard_indexes(shards):
        index = index.iloc[select_rows(index, select)]
        if not len(index):
            continue
        samples = index["sample"].to_numpy()
        with safe_open(path, framework="np") as fh:  # the selected rows only (load_shard's values, picked)
            images = read_stored_rows(fh.get_slice("image"), samples).astype(np.float32)
            masks = to_condition_values(read_stored_rows(fh.get_slice("masks"), samples))
        yield index.reset_index(drop=True).assign(shard=Path(path).stem), images, masks, names


def read_index(shards: Sequence[str | Path]) -> pd.DataFrame:
    """The index of every sample of the shards, without reading a tensor: the index CSVs concatenated in path
    order with the column ``shard`` (the file's stem; ``sample`` is the row of its tensors), the frame
    :func:`load_slices` returns. Positions in it are what :func:`load_rows` takes."""
    parts = [index.assign(shard=Path(path).stem) for path, index, _ in shard_indexes(shards)]
    if not parts:
        raise ValueError("no slices in the training-set shards")
    return pd.concat(parts, ignore_index=True)


def load_rows(shards: Sequence[str | Path], positions: Sequence[int] | np.ndarray, index: pd.DataFrame | None = None
              ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]:
    """The samples at ``positions`` (rows of :func:`read_index`, in any order, repeats allowed), reading only
    their rows (:func:`read_stored_rows`) of the shards that hold them, one shard at a time: ``load_slices(shards)``
    with ``index.iloc[positions]``, ``images[positions]``, ``masks[positions]`` picked, without reading the other
    samples (the index rows keep their labels, the positions). ``index``: :func:`read_index` of ``shards`` when
    the caller has it already. Shards are told apart by their stem (the ``shard`` column), which must be unique
    among those read."""
    index = read_index(shards) if index is None else index
    rows = index.iloc[np.asarray(positions, dtype=np.int64).reshape(-1)]
    paths: dict[str, list[str]] = {}
    for path in sorted(str(p) for p in shards if str(p).endswith(".safetensors")):
        paths.setdefault(Path(path).stem, []).append(path)
    shard_of, samples = rows["shard"].astype(str).to_numpy(), rows["sample"].to_numpy()
    first = str(index["shard"].iloc[0])
    images = masks = None
    for stem in sorted(set(shard_of), key=lambda s: paths.get(s, [""])[0]):
        if len(paths.get(stem, [])) != 1:
            raise ValueError(f"training-set shard {stem!r}: {len(paths.get(stem, []))} files of that stem in "
                             f"{list(shards)}")
        where = np.flatnonzero(shard_of == stem)
        with safe_open(paths[stem][0], framework="np") as fh:
            image = read_stored_rows(fh.get_slice("image"), samples[where]).astype(np.float32)
            mask = to_condition_values(read_stored_rows(fh.get_slice("masks"), samples[where]))
        if images is None:
            images = np.empty((len(rows), *image.shape[1:]), np.float32)
            masks = np.empty((len(rows), *mask.shape[1:]), np.float32)
        images[where], masks[where] = image, mask
    if images is None:  # nothing asked for: empty arrays of the shards' sample shape
        with safe_open(paths[first][0], framework="np") as fh:
            shapes = {k: fh.get_slice(k).get_shape() for k in ("image", "masks")}
        images = np.zeros((0, *shapes["image"][1:]), np.float32)
        masks = np.zeros((0, *shapes["masks"][1:]), np.float32)
    return rows, images, masks, shard_condition_names(paths[first][0])


def load_slices(shards: Sequence[str | Path], select: Mapping[str, Sequence] | None = None
                ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]:
    """All samples of the shards (``.safetensors``; the index is the same stem ``.csv``), slices or volumes,
    or those ``select`` keeps (selected shard by shard, :func:`iter_slices`).

    Returns ``(index, images (N, 1, *spatial) in [-1, 1], masks (N, C, *spatial) in [-0.5, 0.5], names)``;
    ``spatial`` is ``(H, W)`` for slice shards and ``(X, Y, Z)`` for volume shards (``slice = -1``).
    """
    loaded = join_slices(iter_slices(shards, select))
    if loaded is None:
        raise ValueError("no slices in the training-set shards" + (f" kept by select {dict(select)}" if select else ""))
    return loaded


def join_slices(parts: Iterable[Slices]) -> Slices | None:
    """:func:`iter_slices`' per-shard parts joined as :func:`load_slices` returns them (index rows renumbered,
    arrays concatenated, the first part's names), or ``None`` when there are no parts (no error)."""
    parts = list(parts)
    if not parts:
        return None
    return (pd.concat([p[0] for p in parts], ignore_index=True), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), parts[0][3])


def both_selections(a: Mapping[str, Sequence] | None, b: Mapping[str, Sequence] | None) -> dict[str, list]:
    """One selection keeping the rows both ``a`` and ``b`` keep (:func:`select_rows`): a column named by both
    keeps the values in both (compared as text, as select_rows compares them)."""
    merged = {k: list(v) for k, v in (a or {}).items()}
    for key, values in (b or {}).items():
        allowed = {str(v) for v in values}
        merged[key] = [v for v in merged[key] if str(v) in allowed] if key in merged else list(values)
    return merged


#: the selection key keeping the rows whose masks hold every named condition channel (index column ``organs``)
PRESENT_KEY = "present"


def select_rows(index: pd.DataFrame, select: Mapping[str, Sequence] | None) -> np.ndarray:
    """Row positions whose column values are in the allowed lists (``{"split": ["train"], "modality": ["MR"]}``);
    the key ``present`` keeps the rows whose masks hold every channel it names (``{"present": ["ggo"]}``: the
    index column ``organs`` lists a row's non-empty channels)."""
    keep = np.ones(len(index), bool)
    for column, allowed in (select or {}).items():
        if column == PRESENT_KEY:
            keep &= _holding(index, allowed)
            continue
        if column not in index:
            raise KeyError(f"select: column {column!r} not in the training-set index ({list(index.columns)})")
        keep &= index[column].astype(str).isin([str(a) for a in allowed]).to_numpy()
    return np.flatnonzero(keep)


def _holding(index: pd.DataFrame, channels: Sequence[str]) -> np.ndarray:
    """Rows whose ``organs`` (a JSON list of non-empty channels) holds every one of ``channels``."""
    if "organs" not in index:
        raise KeyError(f"select: {PRESENT_KEY!r} needs the index column 'organs' ({list(index.columns)})")
    wanted = {str(c) for c in channels}
    return np.array([wanted <= set(json.loads(v) if isinstance(v, str) and v else []) for v in index["organs"]],
                    dtype=bool)
