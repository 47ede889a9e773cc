"""The blinded draw: which generated conditions become real cases and which synthetic ones, in which order.

Every case comes from one row of a generated set (a real held-out slice's mask and prompt). A real case
shows that real slice, a synthetic case the image generated from it; real and synthetic cases come from
different rows, so a reader never sees a real slice beside the image generated from its own mask. The
prompt and mask shown are the same kind of record for both (the generated set's), so nothing but the image
tells them apart. Case ids (``case-001``, ...) number the shuffled order.

:func:`draw_by_pathology` draws per pathology instead (MedSyn2's 15 real + 15 synthetic pairs per
abnormality, Table 8): each stratum from the rows whose mask has that condition channel, no row in two strata.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["draw_cases", "draw_by_pathology", "kit_id"]

log = logging.getLogger(__name__)


def _counts(n_real: int, n_synthetic: int, available: int) -> tuple[int, int]:
    """``(n_real, n_synthetic)`` scaled down, in proportion, to ``available`` conditions."""
    total = n_real + n_synthetic
    if total <= available:
        return n_real, n_synthetic
    real = int(round(available * n_real / total))
    return real, available - real


def draw_cases(masks: np.ndarray, n_real: int, n_synthetic: int, seed: int, require_mask: bool = True) -> pd.DataFrame:
    """Cases of the kit in their shown order: ``case_id``, ``truth`` (real / synthetic), ``sample`` (the row
    of the generated set). ``masks``: the generated set's conditioning masks ``(N, C, H, W)``; with
    ``require_mask`` only rows with a foreground pixel are drawn (the match question needs a mask)."""
    if n_real < 0 or n_synthetic < 0 or n_real + n_synthetic == 0:
        raise ValueError(f"readers.real = {n_real}, readers.synthetic = {n_synthetic}: the kit needs a case")
    pool = np.arange(len(masks))
    if require_mask:
        pool = pool[np.asarray(masks).reshape(len(masks), -1).any(axis=1)]
    if not len(pool):
        raise ValueError("no condition of the generated set has a mask pixel; set readers.require_mask: false "
                         "to draw slices without one")
    real, synthetic = _counts(n_real, n_synthetic, len(pool))
    if (real, synthetic) != (n_real, n_synthetic):
        log.warning("only %d conditions to draw from: %d real + %d synthetic cases instead of %d + %d",
                    len(pool), real, synthetic, n_real, n_synthetic)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(pool)[: real + synthetic]
    truth = np.array(["real"] * real + ["synthetic"] * synthetic)
    return _shuffled(rng, chosen, truth)


def _shuffled(rng: np.random.Generator, chosen: np.ndarray, truth: np.ndarray,
              pathology: np.ndarray | None = None) -> pd.DataFrame:
    """The cases in the order ``rng`` shuffles them into, numbered ``case-001``, ... in that order."""
    order = rng.permutation(len(chosen))
    width = max(3, len(str(len(chosen))))
    cases = pd.DataFrame({"case_id": [f"case-{k + 1:0{width}d}" for k in range(len(chosen))],
                          "truth": truth[order], "sample": np.asarray(chosen)[order].astype(int)})
    if pathology is not None:
        cases["pathology"] = pathology[order]
    return cases


def _present(masks: np.ndarray, channel: int) -> np.ndarray:
    """Rows of the generated set whose mask has a foreground pixel in ``channel``."""
    masks = np.asarray(masks)
    return np.flatnonzero(masks[:, channel].reshape(len(masks), -1).any(axis=1))


def draw_by_pathology(masks: np.ndarray, channels: Mapping[str, int], n_real: int, n_synthetic: int,
                      seed: int) -> pd.DataFrame:
    """Cases drawn per pathology: ``n_real`` + ``n_synthetic`` of each (``channels``: pathology -> its channel
    in ``masks`` ``(N, C, H, W)``) from the rows whose mask has that channel; columns as :func:`draw_cases`
    plus ``pathology``. A row qualifying for several pathologies is drawn for one at most; the strata are
    drawn rarest first (fewest rows, then the order of ``channels``) so a common one does not starve a rare
    one. A stratum with too few rows is scaled down in proportion (logged)."""
    if not channels:
        raise ValueError("draw_by_pathology needs at least one pathology (readers.pathologies)")
    if n_real < 0 or n_synthetic < 0 or n_real + n_synthetic == 0:
        raise ValueError(f"readers.real = {n_real}, readers.synthetic = {n_synthetic}: the kit needs a case")
    rng = np.random.default_rng(seed)
    candidates = {name: _present(masks, int(c)) for name, c in channels.items()}
    used: set[int] = set()
    chosen, truth, pathology = [], [], []
    for name in sorted(candidates, key=lambda n: len(candidates[n])):  # stable: ties keep the config order
        pool = np.array([i for i in candidates[name] if i not in used], dtype=int)
        real, synthetic = _counts(n_real, n_synthetic, len(pool))
        if (real, synthetic) != (n_real, n_synthetic):
            log.warning("pathology %s: only %d conditions to draw from (%d with the channel, the rest drawn for "
                        "another pathology): %d real + %d synthetic cases instead of %d + %d", name, len(pool),
                        len(candidates[name]), real, synthetic, n_real, n_synthetic)
        picked = rng.permutation(pool)[: real + synthetic]
        used.update(int(i) for i in picked)
        chosen += [int(i) for i in picked]
        truth += ["real"] * real + ["synthetic"] * synthetic
        pathology += [name] * (real + synthetic)
    if not chosen:
        raise ValueError(f"no condition of the generated set has a mask pixel in the channels of readers.pathologies "
                         f"({', '.join(channels)})")
    return _shuffled(rng, np.array(chosen, dtype=int), np.array(truth), np.array(pathology))


def kit_id(key: pd.DataFrame) -> str:
    """A short fingerprint of the key (what each answer file names, so that it is scored against its own kit)."""
    return hashlib.sha256(key.to_csv(index=False).encode()).hexdigest()[:12]
