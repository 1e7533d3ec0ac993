"""Exact geometry of reorient, flip, rot90, crop and pad (2D and 3D)."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from medjax.data.transforms import (
    crop,
    crop_foreground,
    flip,
    flip_affine,
    foreground_bbox,
    pad_to,
    reorient,
    rot90,
    rot90_affine,
)

ALL_CODES = [
    "".join(letters)
    for perm in itertools.permutations([("R", "L"), ("A", "P"), ("S", "I")])
    for letters in itertools.product(*perm)
]


def world(affine, idx):
    idx = np.asarray(idx, dtype=np.float64)
    idx3 = np.zeros(idx.shape[:-1] + (3,))
    idx3[..., : idx.shape[-1]] = idx
    return idx3 @ affine[:3, :3].T + affine[:3, 3]


def rotation(ax, deg):
    t = np.deg2rad(deg)
    i, j = [a for a in range(3) if a != ax]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return m


def make_affine(code, spacing=(1.0, 2.0, 3.0), origin=(10.0, -20.0, 5.0), oblique_deg=0.0):
    """Affine whose array axes point towards ``code`` (e.g. "LPS"), optionally rotated obliquely."""
    letters = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    a = np.eye(4)
    a[:3, :3] = 0
    for i, c in enumerate(code):
        w, s = letters[c]
        a[w, i] = s * spacing[i]
    a[:3, :3] = rotation(2, oblique_deg) @ rotation(0, oblique_deg / 2) @ a[:3, :3]
    a[:3, 3] = origin
    return a


def assert_tracked(old, old_aff, new, new_aff, has_channels, n):
    """Every new voxel holds a unique old value; its world position is the old voxel's (1e-6 mm)."""
    vals = new[..., 0] if has_channels else new
    old_vals = old[..., 0] if has_channels else old
    lookup = np.argsort(old_vals, axis=None)
    new_idx = np.argwhere(np.ones(vals.shape, bool))
    old_flat = lookup[np.searchsorted(np.sort(old_vals, axis=None), vals.ravel())]
    old_idx = np.stack(np.unravel_index(old_flat, old_vals.shape), axis=-1)
    np.testing.assert_array_equal(old_vals[tuple(old_idx.T)], vals.ravel())
    np.testing.assert_allclose(world(new_aff, new_idx), world(old_aff, old_idx), atol=1e-6, rtol=0)


@pytest.mark.parametrize("source", ["RAS", "LPS", "PIR", "ILA"])
def test_reorient_3d_all_targets_exact(source):
    shape = (4, 5, 6)
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape + (1,))
    aff = make_affine(source)
    for target in ALL_CODES:
        new, new_aff = reorient(arr, aff, target)
        assert "".join(nib.aff2axcodes(new_aff)) == target
        assert new.shape[-1] == 1 and sorted(new.shape[:3]) == sorted(shape)
        assert_tracked(arr, aff, new, new_aff, True, 3)


def test_reorient_oblique_is_handled_exactly():
    shape = (3, 4, 5)
    arr = np.arange(60, dtype=np.int32).reshape(shape)
    aff = make_affine("PSL", oblique_deg=25.0)
    for target in ("RAS", "LPS", "PIR"):
        new, new_aff = reorient(arr, aff, target, has_channels=False)
        assert "".join(nib.aff2axcodes(new_aff)) == target
        assert_tracked(arr, aff, new, new_aff, False, 3)
        # the obliquity is kept: the column directions are a signed permutation of the old ones
        cols = new_aff[:3, :3] / np.linalg.norm(new_aff[:3, :3], axis=0)
        old_cols = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
        np.testing.assert_allclose(np.abs(cols.T @ old_cols).max(axis=1), 1.0, atol=1e-12)


def test_reorient_matches_nibabel_as_closest_canonical():
    arr = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    aff = make_affine("LIP", oblique_deg=10.0)
    ref = nib.as_closest_canonical(nib.Nifti1Image(arr, aff))
    new, new_aff = reorient(arr, aff, "RAS", has_channels=False)
    np.testing.assert_array_equal(new, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(new_aff, ref.affine, atol=1e-9)


@pytest.mark.parametrize("source", ["RA", "PR", "LS"])
def test_reorient_2d_in_plane_only(source):
    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    code3 = source + sorted(set(opposite) - set(source) - {opposite[c] for c in source})[0]
    aff = make_affine(code3)
    arr = np.arange(20, dtype=np.float32).reshape(4, 5, 1)
    new, new_aff = reorient(arr, aff, "RAS")
    np.testing.assert_array_equal(new_aff[:3, 2], aff[:3, 2])  # the slice normal is untouched
    codes = "".join(nib.aff2axcodes(new_aff))[:2]
    order = [c for c in "RAS" if c in codes or opposite[c] in codes]
    assert codes == "".join(order)
    assert_tracked(arr, aff, new, new_aff, True, 2)


def test_reorient_rejects_bad_codes_and_affines():
    arr = np.zeros((2, 2, 2, 1))
    with pytest.raises(ValueError, match="orientation code"):
        reorient(arr, np.eye(4), "RAR")
    with pytest.raises(ValueError, match="orientation code"):
        reorient(arr, np.eye(4), "XYZ")
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        reorient(arr, np.eye(3))
    with pytest.raises(ValueError, match="2D or 3D"):
        reorient(np.zeros((2, 2, 2, 2, 1)), np.eye(4))


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5)])
def test_flip_matches_numpy_and_affine_is_exact(shape):
    arr = np.arange(2 * np.prod(shape), dtype=np.float32).reshape(shape + (2,))
    aff = make_affine("LPS")
    n = len(shape)
    for axes in [(0,), (n - 1,), tuple(range(n))]:
        out = flip(arr, axes)
        np.testing.assert_array_equal(out, np.flip(arr, axis=axes))
        assert_tracked(arr, aff, out, flip_affine(aff, axes, shape), True, n)
    lab = arr[..., 0].astype(np.int16)
    np.testing.assert_array_equal(flip(lab, 0, has_channels=False), lab[::-1])


@pytest.mark.parametrize("shape,axes", [((3, 4), (0, 1)), ((3, 4, 5), (0, 1)), ((3, 4, 5), (1, 2)), ((3, 4, 5), (2, 0))])
def test_rot90_matches_numpy_and_affine_is_exact(shape, axes):
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape + (1,))
    aff = make_affine("RAS", oblique_deg=15)
    for k in range(-1, 5):
        out = rot90(arr, k, axes)
        np.testing.assert_array_equal(out, np.rot90(arr, k, axes=axes))
        assert_tracked(arr, aff, out, rot90_affine(aff, k, axes, shape), True, len(shape))
    with pytest.raises(ValueError, match="different"):
        rot90(arr, 1, (0, 0))


@pytest.mark.parametrize("shape", [(6, 7), (6, 7, 8)])
def test_crop_and_pad_keep_world_positions(shape):
    n = len(shape)
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape + (1,)) + 1
    aff = make_affine("LPS", oblique_deg=20)
    slices = (slice(1, 4), slice(2, None), slice(3, 5))[:n]
    out, out_aff = crop(arr, aff, slices)
    assert out.shape[:n] == tuple(len(range(*s.indices(sz))) for s, sz in zip(slices, shape))
    assert_tracked(arr, aff, out, out_aff, True, n)

    padded, pad_aff = pad_to(out, out_aff, (9,) * n, value=0)
    assert padded.shape[:n] == (9,) * n and padded.shape[-1] == 1
    # symmetric: (9 - 3) // 2 = 3 voxels before, the odd voxel after
    assert padded[(3,) + (slice(None),) * n][..., 0].any() and not padded[(2,) + (slice(None),) * n].any()
    inner = padded[..., 0][padded[..., 0] > 0]
    np.testing.assert_array_equal(np.sort(inner), np.sort(out[..., 0], axis=None))
    # every non-padded voxel: same world position as in the crop
    nz = np.argwhere(padded[..., 0] > 0)
    src = np.stack([np.argwhere(out[..., 0] == v)[0] for v in padded[..., 0][tuple(nz.T)]])
    np.testing.assert_allclose(world(pad_aff, nz), world(out_aff, src), atol=1e-6)


def test_pad_to_keeps_larger_axes_and_broadcasts():
    arr = np.ones((5, 2, 3), np.int16)
    out, aff = pad_to(arr, np.eye(4), (4,), has_channels=False)
    assert out.shape == (5, 4, 4)
    np.testing.assert_array_equal(aff[:3, 3], [0, -1, 0])
    out, _ = pad_to(arr, np.eye(4), (5, 2, 3), has_channels=False)
    assert out is arr
    out, _ = pad_to(arr, np.eye(4), (6, 2, 3), mode="edge", has_channels=False)
    assert out.shape == (6, 2, 3) and (out == 1).all()


@pytest.mark.parametrize("n", [2, 3])
def test_foreground_bbox_and_crop_foreground(n):
    shape = (10, 11, 12)[:n]
    arr = np.zeros(shape + (2,), np.float32)
    lo, hi = (2, 3, 4)[:n], (5, 7, 9)[:n]
    arr[tuple(slice(a, b) for a, b in zip(lo, hi)) + (1,)] = 3.0
    box = foreground_bbox(arr, has_channels=True)
    assert box == tuple(slice(a, b) for a, b in zip(lo, hi))
    assert foreground_bbox(arr[..., 1], 0, margin=1) == tuple(slice(a - 1, b + 1) for a, b in zip(lo, hi))
    assert foreground_bbox(arr[..., 1], 0, margin=100) == tuple(slice(0, s) for s in shape)
    assert foreground_bbox(arr[..., 1], threshold=3.0) == tuple(slice(0, s) for s in shape)  # empty: whole
    aff = make_affine("PIR")
    out, out_aff, slices = crop_foreground(arr, aff, margin=1)
    assert out.shape == tuple(b - a + 2 for a, b in zip(lo, hi)) + (2,)
    assert slices == tuple(slice(a - 1, b + 1) for a, b in zip(lo, hi))
    first = tuple(a - 1 for a in lo)
    np.testing.assert_allclose(world(out_aff, [0] * n), world(aff, first), atol=1e-9)


def test_crop_slices_index_leading_axes_of_labels_too():
    lab = np.arange(60).reshape(3, 4, 5)
    out, aff = crop(lab, np.eye(4), (slice(1, 3), slice(0, 2), slice(2, 5)))  # no has_channels needed
    np.testing.assert_array_equal(out, lab[1:3, 0:2, 2:5])
    np.testing.assert_allclose(aff[:3, 3], [1, 0, 2])
    out, aff = crop(lab[..., None], np.eye(4), (slice(1, None),))
    assert out.shape == (2, 4, 5, 1)
    with pytest.raises(ValueError, match="step 1"):
        crop(lab, np.eye(4), (slice(0, 3, 2), slice(None), slice(None)))
