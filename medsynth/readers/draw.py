"""The blinded draw: which generated conditions become real cases and which synthetic ones, in which order.

Every case comes from one row of a generated set (a real held-out slice's mask and prompt). A real case
shows that real slice, a synthetic case the image generated from it; real and synthetic cases come from
different rows, so a reader never sees a real slice beside the image generated from its own mask. The
prompt and mask shown are the same kind of record for both (the generated set's), so nothing but the image
tells them apart. Case ids (``case-001``, ...) number the shuffled order.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

__all__ = ["draw_cases", "kit_id"]

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
    order = rng.permutation(len(chosen))
    width = max(3, len(str(len(chosen))))
    return pd.DataFrame({"case_id": [f"case-{k + 1:0{width}d}" for k in range(len(chosen))],
                         "truth": truth[order], "sample": chosen[order].astype(int)})


def kit_id(key: pd.DataFrame) -> str:
    """A short fingerprint of the key (what each answer file names, so that it is scored against its own kit)."""
    return hashlib.sha256(key.to_csv(index=False).encode()).hexdigest()[:12]
