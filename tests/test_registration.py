"""Affine registration (antspyx and SimpleITK backends), transform files, resampling, study grid and
template building, on the shipped abdomen CT.

The accuracy test moves the real 3 mm abdomen-pelvis CT by a known affine (rotation about each axis,
~5 % scaling, ~11 mm translation), registers it back with each backend, and measures the mean
distance between where the recovered and the true transform put the body voxels (HU > -500) of the
fixed image. Run with ``-s`` to see the measured errors.
"""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from medsynth.preprocess.registration import (
    AffineTransform,
    RegistrationParams,
    build_template,
    reference_grid,
    register_affine,
)

VOXEL_MM = 3.0


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix for angles (degrees) about x, then y, then z."""
    a, b, c = np.deg2rad([rx, ry, rz])
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rot_z = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def _known_transform(img: nib.Nifti1Image) -> AffineTransform:
    """Fixed -> moving: 4/-3/5 degrees, scales 1.05/0.96/1.03 about the image centre, (8,-6,5) mm shift."""
    centre = (img.affine @ np.array([*((np.asarray(img.shape) - 1) / 2.0), 1.0]))[:3]
    a = _rotation(4.0, -3.0, 5.0) @ np.diag([1.05, 0.96, 1.03])
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = centre - a @ centre + np.array([8.0, -6.0, 5.0])
    return AffineTransform(m)


def _digest(img: nib.Nifti1Image) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(img.dataobj)).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def abdomen(example_dir) -> nib.Nifti1Image:
    img = nib.load(str(example_dir / "ct" / "abdomen_pelvis_ct_3mm.nii.gz"))
    return nib.Nifti1Image(np.asarray(img.dataobj), img.affine)


@pytest.fixture(scope="module")
def known_case(abdomen):
    """(fixed, moved, true fixed->moving transform, fixed body points in RAS mm)."""
    true = _known_transform(abdomen)
    # moving(T(x)) = fixed(x)  <=>  moving = fixed resampled through T^-1, on the same grid
    moved = true.inverse().apply(abdomen, abdomen, "linear", default_value=-1024, dtype=np.int16)
    body = np.argwhere(np.asarray(abdomen.dataobj) > -500)
    points = nib.affines.apply_affine(abdomen.affine, body)
    return abdomen, moved, true, points


@pytest.fixture(scope="module", params=["ants", "sitk"])
def registered(request, known_case):
    fixed, moved, true, points = known_case
    before = (_digest(fixed), _digest(moved))
    tx = register_affine(moved, fixed, RegistrationParams.from_config(dict(backend=request.param)))
    assert (_digest(fixed), _digest(moved)) == before, "registration must not alter its inputs"
    return request.param, tx


# ---------------------------------------------------------------------------------------------


def test_params_from_config():
    p = RegistrationParams.from_config(
        {"registration": {"backend": "SITK", "iterations": [10, 5], "shrink_factors": [2, 1],
                          "smoothing_sigmas": [1, 0], "seed": 7, "intensity_range": [-200, 300]}}
    )
    assert (p.backend, p.iterations, p.shrink_factors, p.smoothing_sigmas, p.seed) == ("sitk", [10, 5], [2, 1], [1.0, 0.0], 7)
    assert p.intensity_range == (-200.0, 300.0)
    defaults = RegistrationParams.from_config({})
    from medsynth.settings import section

    assert defaults.to_dict() == section("preprocess")["registration"]  # the schema's defaults
    assert (defaults.backend, defaults.metric, defaults.shrink_factors) == ("ants", "mattes", [4, 2, 1])
    assert defaults.smoothing_sigmas == [2.0, 1.0, 0.0] and defaults.iterations == [200, 100, 50]
    assert RegistrationParams.from_config(defaults.to_dict()) == defaults
    for bad in ({"backend": "elastix"}, {"metric": "cc"}, {"iterations": [1, 2]}, {"seed": 0},
                {"sampling_fraction": 0}, {"shrink_factor": [2]}):
        with pytest.raises(ValueError):
            RegistrationParams.from_config(bad)


def test_register_affine_recovers_known_affine(registered, known_case):
    backend, tx = registered
    fixed, moved, true, points = known_case
    start = true.displacement(AffineTransform.identity(), points).mean()
    err = tx.displacement(true, points)
    print(f"\n[{backend}] mean displacement error {err.mean():.3f} mm (max {err.max():.3f} mm) over "
          f"{len(points)} body voxels; identity would be {start:.1f} mm; metric {tx.metric_value:.4f}")
    assert start > 3 * VOXEL_MM  # the problem is not trivial
    assert err.mean() < VOXEL_MM
    assert tx.backend == backend and np.isfinite(tx.metric_value)
    # the registered image matches the moved image put back with the true transform
    out = tx.apply(moved, fixed, "linear", default_value=-1024)
    ideal = np.asarray(true.apply(moved, fixed, "linear", default_value=-1024).dataobj)
    body = np.asarray(fixed.dataobj) > -500
    r = np.corrcoef(np.asarray(out.dataobj)[body], ideal[body])[0, 1]
    assert r > 0.95
    np.testing.assert_array_equal(out.affine, fixed.affine)
    assert out.shape == fixed.shape and out.get_data_dtype() == np.float32


def test_sitk_is_reproducible(known_case):
    fixed, moved, _, _ = known_case
    params = RegistrationParams.from_config(dict(backend="sitk", iterations=[50, 20, 0]))
    a = register_affine(moved, fixed, params)
    b = register_affine(moved, fixed, params)
    np.testing.assert_array_equal(a.matrix, b.matrix)


@pytest.mark.slow
def test_ants_is_reproducible(registered, known_case):
    backend, tx = registered
    if backend != "ants":
        pytest.skip("ants only")
    fixed, moved, _, _ = known_case
    again = register_affine(moved, fixed, RegistrationParams.from_config(dict(backend="ants")))
    np.testing.assert_array_equal(again.matrix, tx.matrix)


def test_nearest_keeps_label_values(example_dir, abdomen):
    labels = nib.load(str(example_dir / "labels" / "upper_abdomen_ct_3mm_total.nii.gz"))
    data = np.asarray(labels.dataobj)
    tx = _known_transform(labels)
    out = tx.apply(labels, labels, "nearest")
    values = np.asarray(out.dataobj)
    assert out.get_data_dtype() == data.dtype and out.shape == data.shape
    assert set(np.unique(values)) <= set(np.unique(data))
    assert len(np.unique(values)) >= len(np.unique(data)) - 3  # structures survive the move
    # a label map moved onto another grid (the 3 mm abdomen-pelvis scan) keeps only label values too
    onto = tx.apply(labels, abdomen, "nearest", default_value=0)
    assert set(np.unique(np.asarray(onto.dataobj))) <= set(np.unique(data))
    # linear interpolation would have invented values (so the check above means something)
    linear = np.asarray(tx.apply(labels, labels, "linear").dataobj)
    assert not set(np.unique(linear)) <= set(np.unique(data).astype(np.float32))


@pytest.mark.parametrize("suffix", [".json", ".tfm", ".mat", ".txt"])
def test_save_load_round_trip(tmp_path, registered, known_case, suffix):
    backend, tx = registered
    fixed, moved, _, _ = known_case
    path = tx.save(tmp_path / f"case_affine{suffix}")
    assert path.exists() and not list(tmp_path.glob(".*tmp*"))  # written atomically, no leftovers
    back = AffineTransform.load(path)
    np.testing.assert_allclose(back.matrix, tx.matrix, rtol=0, atol=1e-9)
    if suffix == ".json":
        assert back.backend == backend and back.metric_value == pytest.approx(tx.metric_value)
        assert json.loads(path.read_text())["matrix_ras"] == tx.matrix.tolist()
    np.testing.assert_array_equal(
        np.asarray(back.apply(moved, fixed, "nearest").dataobj), np.asarray(tx.apply(moved, fixed, "nearest").dataobj)
    )


def test_transform_file_matches_ants_resampling(tmp_path, registered, known_case):
    """The .mat file means the same to ANTs as to us (world convention, direction, LPS/RAS)."""
    ants = pytest.importorskip("ants")
    from medsynth.preprocess.registration.ants_backend import _ants_image

    _, tx = registered
    fixed, moved, _, _ = known_case
    path = str(tx.save(tmp_path / "affine.mat"))
    ours = np.asarray(tx.apply(moved, fixed, "linear", default_value=-1024).dataobj)
    warped = ants.apply_transforms(
        fixed=_ants_image(np.asarray(fixed.dataobj), fixed.affine),
        moving=_ants_image(np.asarray(moved.dataobj), moved.affine),
        transformlist=[path],
        interpolator="linear",
        defaultvalue=-1024,
    ).numpy()
    inner = (slice(5, -5),) * 3
    assert np.median(np.abs(ours[inner] - warped[inner])) < 1.0


def test_reference_grid_crops_pads_and_resamples(abdomen):
    spacing, size = (2.0, 2.0, 4.0), (200, 120, 100)  # x: pad (366 -> 400 mm), y: crop (303 -> 240 mm)
    grid = reference_grid(abdomen, spacing, size)
    assert grid.shape == size and grid.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), spacing)
    centre = lambda img: (img.affine @ np.array([*((np.asarray(img.shape) - 1) / 2.0), 1.0]))[:3]  # noqa: E731
    np.testing.assert_allclose(centre(grid), centre(abdomen), atol=1e-6)
    data = np.asarray(grid.dataobj)
    assert data[0].max() == data.min() == np.asarray(abdomen.dataobj).min()  # padded in x
    # grid voxels hold the template's (trilinear) value at the same world point
    ijk = np.array([[100, 60, 50], [37, 11, 80], [150, 100, 20]])
    src = nib.affines.apply_affine(np.linalg.inv(abdomen.affine) @ grid.affine, ijk)
    expected = map_coordinates(np.asarray(abdomen.dataobj, dtype=np.float64), src.T, order=1)
    np.testing.assert_allclose(data[tuple(ijk.T)], expected, atol=0.05)

def _downsample(img: nib.Nifti1Image, spacing: float) -> nib.Nifti1Image:
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    size = tuple(int(s) for s in np.round(np.asarray(img.shape) * zooms / spacing))
    return reference_grid(img, (spacing,) * 3, size)


@pytest.mark.parametrize("backend", ["sitk", pytest.param("ants", marks=pytest.mark.slow)])
def test_build_template(abdomen, backend):
    small = _downsample(abdomen, 6.0)
    true = _known_transform(small)
    moved = true.inverse().apply(small, small, "linear", default_value=-1024)
    params = RegistrationParams.from_config(dict(backend=backend, shrink_factors=[2, 1], smoothing_sigmas=[1, 0],
                                                 iterations=[100, 30]))
    template = build_template([small, moved, small], params, iterations=2)
    assert template.shape == small.shape and template.get_data_dtype() == np.float32
    np.testing.assert_allclose(template.affine, small.affine)
    data = np.asarray(template.dataobj)
    assert np.all(np.isfinite(data)) and data.min() >= -1100
    body = np.asarray(small.dataobj) > -500
    # unbiased: the cases are aligned (sharp mean) and the template sits in their mean pose,
    # here a third of the way from `small` to `moved`: template(y) = small(mean^-1 y)
    mean_pose = AffineTransform((2 * np.eye(4) + true.matrix) / 3)
    expected = np.asarray(mean_pose.inverse().apply(small, small, "linear").dataobj)
    assert np.corrcoef(data[body], expected[body])[0, 1] > 0.95
    # without unbiasing the template keeps the pose of its start image
    kept = np.asarray(build_template([small, moved], params, iterations=1, unbias=False, start="median").dataobj)
    assert np.corrcoef(kept[body], np.asarray(small.dataobj)[body])[0, 1] > 0.95
    resampled = build_template([small, moved], params, iterations=1, spacing_mm=(8.0, 8.0, 8.0))
    np.testing.assert_allclose(np.linalg.norm(resampled.affine[:3, :3], axis=0), 8.0)


def test_template_starts_from_largest_field_of_view_and_partial_scan_registers_into_it(abdomen):
    """A slab (slices 82-111 of the abdomen CT, like the shipped upper-abdomen scan) must land where it came
    from: the superior-inferior shift search fixes the centre-of-mass start, which is ~120 mm off."""
    small = _downsample(abdomen, 6.0)
    data = np.asarray(small.dataobj)
    k0, k1 = data.shape[2] // 2 + 10, data.shape[2] - 2
    slab = nib.Nifti1Image(np.ascontiguousarray(data[:, :, k0:k1]), small.affine @ _shift_k(k0))
    params = RegistrationParams.from_config(dict(backend="sitk", shrink_factors=[2, 1], smoothing_sigmas=[1, 0],
                                                 iterations=[100, 30]))
    template = build_template([slab, small], params, iterations=1, unbias=False)
    assert template.shape == small.shape  # started from the larger field of view
    tx = register_affine(slab, small, params)
    assert abs(tx.info["init_search"]["shift_mm"]) > 20
    inside = np.argwhere(np.ones(slab.shape, bool))
    points = (small.affine @ np.c_[inside + [0, 0, k0], np.ones(len(inside))].T).T[:, :3]
    error = np.linalg.norm(tx.transform_points(points) - points, axis=1).mean()
    assert error < 6.0  # under one voxel of this 6 mm grid
    off = register_affine(slab, small, RegistrationParams.from_config(dict(
        backend="sitk", shrink_factors=[2, 1], smoothing_sigmas=[1, 0], iterations=[100, 30], init_search_step_mm=0)))
    assert "shift_mm" not in off.info["init_search"]


def _shift_k(k: int) -> np.ndarray:
    m = np.eye(4)
    m[2, 3] = k
    return m
