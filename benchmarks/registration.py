"""Seconds per volume of affine registration, antspyx vs SimpleITK, on the shipped CTs.

Every shipped CT (abdomen_pelvis 3 mm, upper_abdomen 3 mm, chest_cta 1.5 mm) is resampled to each
study spacing (3 mm and 1.5 mm by default) and registered, with the default ``RegistrationParams``
of each backend, to the template: the abdomen_pelvis scan resampled to the same spacing.

* abdomen_pelvis is first moved by a known affine (4/-3/5 degrees, 5 % scaling, 11 mm shift, as in
  tests/test_registration.py), so registering it to its own original has a known answer.
* upper_abdomen is slices 82-111 of abdomen_pelvis stored with the same affine, i.e. its world
  position is 246 mm lower: the true transform is a pure translation (partial field of view).
* chest_cta is another patient: no ground truth, only the metric.

Columns: ``err_mm`` is the mean distance between where the recovered and the true transform put
the template's body voxels (HU > -500; for upper_abdomen only those inside its field of view);
``metric`` is the Mattes mutual information of the metric images after registration, computed the
same way for both backends (negative; lower is better).

Usage: ``python benchmarks/registration.py [--spacings 3 1.5] [--cases ...] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medsynth.preprocess.registration import (  # noqa: E402
    AffineTransform,
    RegistrationParams,
    reference_grid,
    register_affine,
)

CT = REPO / "resources" / "example_data" / "ct"
CASES = {
    "abdomen_pelvis": CT / "abdomen_pelvis_ct_3mm.nii.gz",
    "upper_abdomen": CT / "upper_abdomen_ct_3mm.nii.gz",
    "chest_cta": CT / "chest_cta_1p5mm.nii.gz",
}
TEMPLATE = "abdomen_pelvis"
UPPER_SHIFT = np.array([0.0, 0.0, -246.0])  # upper_abdomen world = abdomen_pelvis world + shift


def resample_to(img: nib.Nifti1Image, spacing: float) -> nib.Nifti1Image:
    """``img`` on a ``spacing`` mm grid covering the same extent (RAS, float32)."""
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    if np.allclose(zooms, spacing) and "".join(nib.aff2axcodes(img.affine)) == "RAS":
        return nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine)
    size = tuple(int(s) for s in np.maximum(1, np.round(np.asarray(img.shape) * zooms / spacing)))
    return reference_grid(img, (spacing,) * 3, size)


def known_transform(img: nib.Nifti1Image) -> AffineTransform:
    a, b, c = np.deg2rad([4.0, -3.0, 5.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx @ np.diag([1.05, 0.96, 1.03])
    centre = (img.affine @ np.array([*((np.asarray(img.shape) - 1) / 2.0), 1.0]))[:3]
    m[:3, 3] = centre - m[:3, :3] @ centre + np.array([8.0, -6.0, 5.0])
    return AffineTransform(m)


def inside(img: nib.Nifti1Image, points: np.ndarray) -> np.ndarray:
    ijk = nib.affines.apply_affine(np.linalg.inv(img.affine), points)
    return np.all((ijk > -0.5) & (ijk < np.asarray(img.shape) - 0.5), axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacings", type=float, nargs="+", default=[3.0, 1.5])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--backends", nargs="+", default=["ants", "sitk"], choices=["ants", "sitk"])
    ap.add_argument("--threads", type=int, default=1, help="threads per registration (0: library default)")
    args = ap.parse_args(argv)

    originals = {name: nib.load(str(path)) for name, path in CASES.items()}
    header = f"{'case':<16} {'spacing':>7} {'voxels':>10} " + " ".join(
        f"{b + '_s':>8}" for b in args.backends
    )
    if len(args.backends) == 2:
        header += f" {'sitk/ants':>9}"
    header += " " + " ".join(f"{b + '_metric':>12} {b + '_err_mm':>12}" for b in args.backends)
    print(f"template: {TEMPLATE} resampled to each spacing; threads per registration: {args.threads or 'default'}")
    print(header)
    print("-" * len(header))
    for spacing in args.spacings:
        template = resample_to(originals[TEMPLATE], spacing)
        tdata = np.asarray(template.dataobj)
        body = nib.affines.apply_affine(template.affine, np.argwhere(tdata > -500))
        for name in args.cases:
            truth: AffineTransform | None = None
            points = body
            if name == TEMPLATE:
                truth = known_transform(template)
                moving = truth.inverse().apply(template, template, "linear", default_value=-1024)
            else:
                moving = resample_to(originals[name], spacing)
                if name == "upper_abdomen":
                    truth = AffineTransform(np.block([[np.eye(3), UPPER_SHIFT[:, None]], [np.zeros((1, 3)), 1.0]]))
                    points = body[inside(moving, truth.transform_points(body))]
            results = {}
            for backend in args.backends:
                params = RegistrationParams(backend=backend, num_threads=args.threads or None)
                t0 = time.perf_counter()
                tx = register_affine(moving, template, params)
                seconds = time.perf_counter() - t0
                err = float(tx.displacement(truth, points).mean()) if truth is not None else float("nan")
                results[backend] = (seconds, tx.metric_value, err)
            row = f"{name:<16} {spacing:>7.2f} {int(np.prod(template.shape)):>10d} " + " ".join(
                f"{results[b][0]:>8.1f}" for b in args.backends
            )
            if len(args.backends) == 2:
                row += f" {results['sitk'][0] / results['ants'][0]:>9.2f}"
            row += " " + " ".join(
                f"{results[b][1]:>12.4f} {('-' if np.isnan(results[b][2]) else f'{results[b][2]:.2f}'):>12}"
                for b in args.backends
            )
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
