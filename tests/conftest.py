"""Shared fixtures: the shipped scans and small helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "resources" / "example_data"
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (dicom_writer, ...)


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
