"""Resampling: exact voxel-centre mapping, FOV corner kept, blobs stay put, labels keep their values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medjax.data.transforms import resample, resample_geometry


def world(affine, idx):
    idx = np.asarray(idx, dtype=np.float64)
    idx3 = np.zeros(idx.shape[:-1] + (3,))
    idx3[..., : idx.shape[-1]] = idx
    return idx3 @ affine[:3, :3].T + affine[:3, 3]


def oblique_affine(spacing, deg=30.0, origin=(-40.0, 12.0, 7.5)):
    t = np.deg2rad(deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    flip = np.diag([-1.0, 1.0, -1.0])  # LPS-like axes, then oblique
    a = np.eye(4)
    a[:3, :3] = rot @ flip @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def old_index_of(old_aff, new_aff, idx):
    """Continuous old voxel index of new voxel centres ``idx`` via the two affines (world round trip)."""
    w = world(new_aff, idx)
    old = (w - old_aff[:3, 3]) @ np.linalg.inv(old_aff[:3, :3]).T
    return old


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("order", [0, 1])
def test_voxel_centre_mapping_is_exact(n, order):
    rng = np.random.default_rng(n)
    shape = (13, 17, 11)[:n]
    spacing_old = (0.9, 1.3, 2.5)
    target = (1.7, 0.83, 1.13)[:n]  # no new voxel centre falls exactly between two old ones (nearest ties)
    arr = rng.random(shape + (2,)).astype(np.float32)
    aff = oblique_affine(spacing_old)
    out, new_aff = resample(arr, aff, target, order=order)
    new_shape = tuple(int(round(s * o / t)) for s, o, t in zip(shape, spacing_old, target))
    assert out.shape == new_shape + (2,)
    np.testing.assert_allclose(np.linalg.norm(new_aff[:3, :n], axis=0), target, rtol=1e-12)
    # the world coords of new voxel centres map back to x = (j + 0.5) * t / s - 0.5 in the old grid
    idx = np.argwhere(np.ones(new_shape, bool))
    x = old_index_of(aff, new_aff, idx)
    ratio = np.asarray(target) / np.asarray(spacing_old[:n])
    np.testing.assert_allclose(x[:, :n], (idx + 0.5) * ratio - 0.5, atol=1e-9)
    np.testing.assert_allclose(x[:, n:], 0, atol=1e-9)
    frac = np.abs((x[:, :n] + 0.5) % 1.0)
    assert np.min(np.minimum(frac, 1 - frac)) > 1e-6
    # ... and the values are the interpolation of the old grid at exactly those positions
    for c in range(2):
        ref = ndimage.map_coordinates(arr[..., c], x[:, :n].T, order=order, mode="nearest")
        np.testing.assert_allclose(out[..., c].ravel(), ref, atol=1e-5)


def test_fov_corner_is_kept():
    shape, sp, target = (20, 30, 10), (1.0, 1.0, 3.0), (2.0, 1.5, 1.0)
    aff = oblique_affine(sp)
    new_shape, new_aff, _ = resample_geometry(aff, shape, target)
    assert new_shape == (10, 20, 30)
    np.testing.assert_allclose(world(new_aff, [-0.5] * 3), world(aff, [-0.5] * 3), atol=1e-9)
    # exact integer ratios: the high corner is kept too
    np.testing.assert_allclose(world(new_aff, np.array(new_shape) - 0.5), world(aff, np.array(shape) - 0.5),
                               atol=1e-9)


def test_blob_centre_world_position_is_kept():
    shape, sp = (40, 36, 24), (1.0, 1.2, 2.0)
    aff = oblique_affine(sp, deg=20)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    centre_idx = np.array([17.3, 20.6, 11.2])
    d_mm = (grid - centre_idx) * np.asarray(sp)
    blob = np.exp(-(d_mm ** 2).sum(-1) / (2 * 4.0 ** 2)).astype(np.float32)
    for target in [(1.5, 1.5, 1.5), (0.7, 2.2, 1.1)]:
        out, new_aff = resample(blob, aff, target, has_channels=False)
        w = out / out.sum()
        com = (np.argwhere(np.ones(out.shape, bool)) * w.reshape(-1, 1)).sum(0)
        err = world(new_aff, com) - world(aff, centre_idx)
        assert np.linalg.norm(err) < 0.5 * min(target), err


def test_labels_keep_their_label_set_and_dtype():
    rng = np.random.default_rng(1)
    lab = rng.choice(np.array([0, 3, 7, 250], np.int16), size=(15, 14, 9))
    out, _ = resample(lab, oblique_affine((1, 1, 3)), (0.7, 1.9, 1.4), order=0, has_channels=False)
    assert out.dtype == np.int16
    assert set(np.unique(out)) <= {0, 3, 7, 250}
    assert set(np.unique(out)) == {0, 3, 7, 250}


def test_same_spacing_is_identity_and_spline_order_runs():
    arr = np.random.default_rng(2).random((6, 7, 8, 1)).astype(np.float32)
    aff = oblique_affine((1.0, 2.0, 0.5))
    out, new_aff = resample(arr, aff, (1.0, 2.0, 0.5))
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_allclose(new_aff, aff, atol=1e-12)
    out3, aff3 = resample(arr, aff, (0.5,), order=3)
    out1, aff1 = resample(arr, aff, (0.5,), order=1)
    assert out3.shape == out1.shape == (12, 28, 8, 1) and out3.dtype == np.float32
    np.testing.assert_allclose(aff3, aff1)
    assert np.abs(out3 - out1).mean() < 0.1


def test_integer_image_linear_gives_float32_and_bad_spacing_raises():
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    out, _ = resample(arr, np.eye(4), (0.5, 0.5, 0.5), has_channels=False)
    assert out.dtype == np.float32 and out.shape == (4, 6, 8)
    with pytest.raises(ValueError, match="positive"):
        resample(arr, np.eye(4), (0.0, 1.0, 1.0), has_channels=False)
    with pytest.raises(ValueError, match="give 1 value or 3"):
        resample(arr, np.eye(4), (1.0, 1.0), has_channels=False)


def test_mni_template_resample():
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template()  # 1 mm, (197, 233, 189)
    arr = np.asarray(img.dataobj, dtype=np.float32)
    out, new_aff = resample(arr, img.affine, (3.0, 3.0, 3.0), has_channels=False)
    sp = np.linalg.norm(img.affine[:3, :3], axis=0)
    assert out.shape == tuple(int(round(s * o / 3.0)) for s, o in zip(arr.shape, sp))
    # mean intensity (a smooth quantity) is preserved closely by linear resampling
    assert abs(out.mean() - arr.mean()) < 0.02 * arr.mean()
