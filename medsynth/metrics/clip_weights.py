"""Strict loading of the image side of a published CLIP checkpoint, shared by the 3D CLIP extractors.

A CLIP checkpoint holds an image tower, a text tower and their projections. The extractors build
only the image side (:mod:`.m3d_clip`, :mod:`.ct_clip`); :func:`load_image_side` loads it with
``strict=True`` after setting aside the keys under the text-side prefixes the caller names. Any other
key the network lacks, and any key of the network the file lacks, is an error that lists them: a
checkpoint of another layout never loads half-way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["CheckpointLayoutError", "load_image_side"]


class CheckpointLayoutError(ValueError):
    """A weights file whose key names or shapes are not the published layout of the extractor."""


def _listed(keys: list[str], limit: int = 6) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_image_side(net: nn.Module, state: Mapping[str, torch.Tensor], *, unused: Sequence[str],
                    source: str) -> nn.Module:
    """Load ``state`` into ``net`` strictly, except the keys starting with one of ``unused`` (text side).

    Raises :class:`CheckpointLayoutError` naming the missing / unexpected keys or the shape mismatch.
    """
    kept = {k: v for k, v in state.items() if not k.startswith(tuple(unused))}
    own = set(net.state_dict())
    missing, unexpected = sorted(own - set(kept)), sorted(set(kept) - own)
    if missing or unexpected:
        raise CheckpointLayoutError(
            f"{source} is not in the published layout of {type(net).__name__}: "
            + "; ".join(part for part in (f"missing {_listed(missing)}" if missing else "",
                                           f"unexpected {_listed(unexpected)}" if unexpected else "") if part))
    try:
        net.load_state_dict(kept, strict=True)
    except RuntimeError as err:
        raise CheckpointLayoutError(f"{source}: {err}") from None
    return net
