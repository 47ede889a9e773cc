"""Read a weights file without running code from it: safetensors, or a pickle restricted to tensors.

A ``.pt`` / ``.pth`` / ``.bin`` file is a Python pickle, which can run any code while it loads.
torch's ``weights_only`` loader refuses pickles that name anything but tensors and plain
containers; its own message then suggests retrying with ``weights_only=False``, which is exactly
what a pipeline must not do with a downloaded file. :func:`load_weights` says instead that the file
was refused as unsafe, what it tried to load, and how to convert it to safetensors.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["UnsafeWeightsFile", "load_weights"]


class UnsafeWeightsFile(ValueError):
    """A pickled weights file that would run code when loaded (it is not loaded)."""


def _what_it_loads(message: str) -> str:
    """The global the pickle asked for, as torch's message names it ('' when it names none)."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return f" (it asks for {match.group(1)})" if match else ""


def conversion_hint(path: str | Path) -> str:
    """How a person converts a pickled state dict they trust into a safetensors file."""
    target = Path(path).with_suffix(".safetensors")
    return ("If you trust its source, convert it once outside the pipeline: python -c \"import torch; "
            "from safetensors.torch import save_file; "
            f"save_file(torch.load('{path}', weights_only=False), '{target}')\" "
            f"(for a nested checkpoint, save the state dict inside it), then point the config at {target}.")


def load_weights(path: str | Path, allowed: Sequence = ()):
    """The tensors of a weights file: safetensors, or a pickle loaded with torch's ``weights_only`` loader.

    ``allowed``: further globals the pickle may name (``torch.serialization.safe_globals`` entries, e.g. a
    checkpoint's hyper-parameter container). Raises :class:`UnsafeWeightsFile` (the file is never executed)
    when the pickle holds anything else but tensors and plain containers.
    """
    import contextlib

    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    scope = torch.serialization.safe_globals(list(allowed)) if allowed else contextlib.nullcontext()
    try:
        with scope:
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeWeightsFile(
            f"{path} was refused as unsafe: it is a pickle that would run code when loaded{_what_it_loads(str(err))},"
            f" so it was not loaded. {conversion_hint(path)}") from None
