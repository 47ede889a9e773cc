"""The file format of a training-set shard (rule ``training_sets``), for its writer and every reader.

One shard of cases -> one ``.safetensors`` file (tensors ``image`` float16 in [-1, 1], ``masks`` uint8
binary channels, the metadata key ``medsynth``: ``{"conditions": [...], "masks_encoding": ...}``) and one
index CSV of the same stem (a row per sample: case, split, modality, slice, the organs present, every
prompt field of the manifest, and ``sample``, its position in the tensors). Masks are binary on disk;
readers map them to the models' values [-0.5, 0.5] with :func:`to_condition_values`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from medsynth.fsutil import atomic_path, write_csv_atomic

__all__ = ["iter_slices", "load_rows", "load_shard", "load_slices", "read_index", "select_rows", "shard_condition_names",
           "shard_indexes", "to_condition_values", "write_shard"]


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


def shard_condition_names(tensors_path: str | Path) -> list[str]:
    """Condition-channel names stored in a shard's safetensors metadata."""
    from safetensors import safe_open

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
    shards with nothing selected are skipped), so that a consumer holds one shard's images at once:
    ``(index, images, masks, names)`` per shard, as :func:`load_slices` returns them for all."""
    for path, index, names in shard_indexes(shards):
        index = index.iloc[select_rows(index, select)]
        if not len(index):
            continue
        data = load_shard(path)
        samples = index["sample"].to_numpy()
        yield (index.reset_index(drop=True).assign(shard=Path(path).stem), data["image"][samples],
               data["masks"][samples], names)


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
    the shards that hold them, one at a time: ``load_slices(shards)`` with ``index.iloc[positions]``,
    ``images[positions]``, ``masks[positions]`` picked, without holding the other samples (the index rows keep
    their labels, the positions). ``index``: :func:`read_index` of ``shards`` when the caller has it already.
    Shards are told apart by their stem (the ``shard`` column), which must be unique among those read."""
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
        data = load_file(paths[stem][0])
        image = data["image"][samples[where]].astype(np.float32)
        mask = to_condition_values(data["masks"][samples[where]])
        if images is None:
            images = np.empty((len(rows), *image.shape[1:]), np.float32)
            masks = np.empty((len(rows), *mask.shape[1:]), np.float32)
        images[where], masks[where] = image, mask
    if images is None:  # nothing asked for: empty arrays of the shards' sample shape
        from safetensors import safe_open

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
    parts = list(iter_slices(shards, select))
    if not parts:
        raise ValueError("no slices in the training-set shards" + (f" kept by select {dict(select)}" if select else ""))
    return (pd.concat([p[0] for p in parts], ignore_index=True), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), parts[0][3])


def select_rows(index: pd.DataFrame, select: Mapping[str, Sequence] | None) -> np.ndarray:
    """Row positions whose column values are in the allowed lists (``{"split": ["train"], "modality": ["MR"]}``)."""
    keep = np.ones(len(index), bool)
    for column, allowed in (select or {}).items():
        if column not in index:
            raise KeyError(f"select: column {column!r} not in the training-set index ({list(index.columns)})")
        keep &= index[column].astype(str).isin([str(a) for a in allowed]).to_numpy()
    return np.flatnonzero(keep)
