"""2D slices keep a 4x4 affine that places them in the world."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.data.transforms import slice_from_volume


def world(affine, idx):
    idx = np.asarray(idx, dtype=np.float64)
    idx3 = np.zeros(idx.shape[:-1] + (3,))
    idx3[..., : idx.shape[-1]] = idx
    return idx3 @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_world_positions_exact(axis):
    shape = (5, 6, 7)
    vol = np.arange(np.prod(shape), dtype=np.float32).reshape(shape + (1,))
    aff = np.array([[0.0, -1.2, 0.3, 10], [0.9, 0.1, 0.0, -5], [0.0, 0.2, 2.5, 3], [0, 0, 0, 1]])
    index = 3
    sl, sl_aff = slice_from_volume(vol, aff, index, axis)
    rest = [a for a in range(3) if a != axis]
    assert sl.shape == (shape[rest[0]], shape[rest[1]], 1)
    np.testing.assert_allclose(sl_aff[:3, 2], aff[:3, axis])  # the slice axis column is kept
    ij = np.argwhere(np.ones(sl.shape[:2], bool))
    vox = np.zeros((len(ij), 3), int)
    vox[:, rest[0]], vox[:, rest[1]], vox[:, axis] = ij[:, 0], ij[:, 1], index
    np.testing.assert_array_equal(sl[..., 0][tuple(ij.T)], vol[..., 0][tuple(vox.T)])
    np.testing.assert_allclose(world(sl_aff, ij), world(aff, vox), atol=1e-9)


def test_slice_without_channels_negative_index_and_errors():
    vol = np.arange(24).reshape(2, 3, 4)
    sl, aff = slice_from_volume(vol, np.eye(4), -1, axis=2, has_channels=False)
    np.testing.assert_array_equal(sl, vol[:, :, 3])
    np.testing.assert_allclose(aff[:3, 3], [0, 0, 3])
    with pytest.raises(IndexError, match="out of range"):
        slice_from_volume(vol, np.eye(4), 4, axis=2, has_channels=False)
    with pytest.raises(ValueError, match="3D volume"):
        slice_from_volume(vol[..., 0], np.eye(4), 0, has_channels=False)
