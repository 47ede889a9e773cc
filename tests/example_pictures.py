"""How resources/example_pictures/ is made from the shipped upper-abdomen CT (and checked to be so, by
tests/test_pictures.py): each axial slice as an 8-bit soft-tissue picture (W350 / L50, shown as radiologists
view it) with its TotalSegmentator liver mask (0 / 255) - real anatomy stored as a 2D benchmark stores it.
Every 5th slice goes to test/, the rest to train/.

    .venv/bin/python tests/example_pictures.py    # rewrites the folder
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "resources" / "example_data"
LIVER = 5  # TotalSegmentator's id of the liver


def example_pictures(example_dir: Path = EXAMPLE) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"<split>/ct_<z>": (picture uint8 (rows, columns), liver mask uint8 0 / 255)}`` of every slice."""
    from medsynth.figures import radiological
    from medsynth.io.volume import canonical
    from medsynth.preprocess.intensity import hu_window

    image = canonical(nib.load(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz"))
    label = canonical(nib.load(example_dir / "labels" / "upper_abdomen_ct_3mm_total.nii.gz"))
    hu = np.asarray(image.dataobj, np.float32)
    liver = np.asarray(label.dataobj) == LIVER
    out = {}
    for z in range(hu.shape[2]):
        split = "test" if z % 5 == 4 else "train"
        out[f"{split}/ct_{z:02d}"] = ((hu_window(radiological(hu[:, :, z]), 50, 350) * 255).round().astype(np.uint8),
                                      radiological(liver[:, :, z]).astype(np.uint8) * 255)
    return out


def write_example_pictures(root: Path) -> None:
    """Write ``<root>/<split>/images/ct_<z>.png`` and ``<root>/<split>/masks/ct_<z>.png``."""
    from PIL import Image

    for key, (picture, mask) in example_pictures().items():
        split, name = key.split("/")
        for folder, array in (("images", picture), ("masks", mask)):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / split / folder / f"{name}.png", optimize=True)


if __name__ == "__main__":
    write_example_pictures(REPO / "resources" / "example_pictures")
