"""Shared fixtures: the shipped scans and small helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "resources" / "example_data"
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (dicom_writer, ...)


def threshold_masks(hu: np.ndarray) -> np.ndarray:
    """Five uint8 condition channels of a CT from HU thresholds (soft tissue, lung, bone, contrast, empty):
    stand-ins for organ masks in tests that need masks shaped like the pipeline's, not anatomy."""
    return np.stack([(hu > 40) & (hu < 120), hu < -500, hu > 250, (hu > 150) & (hu < 250),
                     np.zeros_like(hu, bool)]).astype(np.uint8)


@pytest.fixture(scope="module")
def text_encoder():
    """The MiniLM text encoder of the generator tests (built from the locally made tokenizer and weights)."""
    from medsynth.models.text import build_text_encoder

    return build_text_encoder({"type": "minilm"})


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one intra-op thread for a test module: on the shared 2-core machine extra threads only
    fight each other at these model sizes, and results stay reproducible."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def example_dir() -> Path:
    return EXAMPLE


@pytest.fixture(scope="session")
def ct_small() -> nib.Nifti1Image:
    """Real CT, upper abdomen, 122x101x30 at 3 mm, RAS, HU."""
    return nib.load(str(EXAMPLE / "ct" / "upper_abdomen_ct_3mm.nii.gz"))


@pytest.fixture(scope="session")
def ct_lps() -> nib.Nifti1Image:
    """Real CT angiography, 233x167x191 at 1.5 mm, stored LPS."""
    return nib.load(str(EXAMPLE / "ct" / "chest_cta_1p5mm.nii.gz"))


@pytest.fixture(scope="session")
def mr_lps() -> nib.Nifti1Image:
    """Real abdominal MR, 117x91x20 at 3 mm, stored LPS."""
    return nib.load(str(EXAMPLE / "mr" / "abdomen_mr_3mm.nii.gz"))
