"""Random augmentations: shapes kept, deterministic per seed, labels stay labels."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.data.transforms import (
    draw_affine,
    draw_flip_axes,
    draw_rot90,
    gamma,
    intensity_jitter,
    random_affine,
    random_flip,
    random_rot90,
    warp_affine,
    warp_affine_matrix,
)


def seeded(fn, *args, seed=0, **kw):
    return fn(*args, np.random.default_rng(seed), **kw)


@pytest.mark.parametrize("shape", [(8, 8), (6, 8, 10)])
def test_random_flip_is_a_flip_and_deterministic(shape):
    arr = np.random.default_rng(0).random(shape + (1,)).astype(np.float32)
    outs = [seeded(random_flip, arr, seed=s) for s in range(8)]
    for s, out in enumerate(outs):
        axes = draw_flip_axes(np.random.default_rng(s), len(shape))
        np.testing.assert_array_equal(out, np.flip(arr, axes) if axes else arr)
        np.testing.assert_array_equal(out, seeded(random_flip, arr, seed=s))
    assert len({draw_flip_axes(np.random.default_rng(s), len(shape)) for s in range(32)}) == 2 ** len(shape)


def test_random_rot90_keeps_shape():
    sq = np.arange(4 * 4 * 6 * 2, dtype=np.float32).reshape(4, 4, 6, 2)
    ks = {draw_rot90(np.random.default_rng(s), (4, 4, 6)) for s in range(40)}
    assert ks == {0, 1, 2, 3}
    for s in range(6):
        out = seeded(random_rot90, sq, seed=s)
        k = draw_rot90(np.random.default_rng(s), (4, 4, 6))
        np.testing.assert_array_equal(out, np.rot90(sq, k, axes=(0, 1)))
    rect = np.zeros((4, 5, 2))
    assert {draw_rot90(np.random.default_rng(s), (4, 5)) for s in range(40)} == {0, 2}
    assert all(seeded(random_rot90, rect, seed=s).shape == rect.shape for s in range(8))


@pytest.mark.parametrize("n", [2, 3])
def test_warp_affine_identity_and_rot90_agree(n):
    shape = (9,) * n
    arr = np.random.default_rng(1).random(shape + (2,)).astype(np.float32)
    np.testing.assert_allclose(warp_affine(arr, np.eye(n)), arr, atol=1e-6)
    # a quarter turn about the centre as a matrix equals np.rot90 (exact on the grid)
    m = np.eye(n)
    m[:2, :2] = [[0, 1], [-1, 0]]  # np.rot90(k=1): out[i, j] = in[j, N - 1 - i]
    out = warp_affine(arr, m, order=1)
    ref = np.rot90(arr, 1, axes=(0, 1))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # affine bookkeeping: output voxel o came from input index t @ o
    t = warp_affine_matrix(m, shape)
    o = np.array([1, 2, 3][:n] + [0] * (3 - n) + [1.0])
    src = (t @ o)[:n]
    np.testing.assert_allclose(out[tuple(o[:n].astype(int))], arr[tuple(np.rint(src).astype(int))], atol=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_random_affine_shape_determinism_and_labels(n):
    shape = (12, 10, 8)[:n]
    img = np.random.default_rng(2).random(shape + (1,)).astype(np.float32)
    a = seeded(random_affine, img, seed=4)
    b = seeded(random_affine, img, seed=4)
    assert a.shape == img.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, seeded(random_affine, img, seed=5))
    lab = np.random.default_rng(3).choice(np.array([0, 2, 5], np.int16), size=shape)
    out = seeded(random_affine, lab, seed=4, order=0, has_channels=False)
    assert out.dtype == np.int16 and set(np.unique(out)) <= {0, 2, 5}
    m = draw_affine(np.random.default_rng(0), n, max_rotation_deg=10, max_scale=0.1)
    sv = np.linalg.svd(m, compute_uv=False)
    assert m.shape == (n, n) and sv.max() <= 1.1 + 1e-9 and sv.min() >= 0.9 - 1e-9


def test_intensity_jitter_bounds_and_determinism():
    x = np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10, 1)
    y = seeded(intensity_jitter, x, seed=9, scale=0.1, shift=0.1)
    np.testing.assert_array_equal(y, seeded(intensity_jitter, x, seed=9, scale=0.1, shift=0.1))
    # affine in x with slope in [0.9, 1.1] and offset in [-0.1, 0.1]
    slope = (y[-1, -1, 0] - y[0, 0, 0]) / (x[-1, -1, 0] - x[0, 0, 0])
    assert 0.9 <= slope <= 1.1 and -0.1 <= y[0, 0, 0] <= 0.1
    np.testing.assert_allclose(y, x * slope + y[0, 0, 0], atol=1e-6)


def test_gamma_preserves_range():
    x = np.linspace(0, 1, 101, dtype=np.float32).reshape(101, 1, 1)
    for s in range(5):
        y = seeded(gamma, x, seed=s)
        assert y.dtype == np.float32 and y.min() == pytest.approx(0) and y.max() == pytest.approx(1)
        assert np.all(np.diff(y[:, 0, 0]) >= 0)  # monotone
    g = seeded(gamma, x, seed=0, log_gamma_range=(0.5, 0.5))
    np.testing.assert_allclose(g[:, 0, 0], x[:, 0, 0] ** np.exp(0.5), atol=1e-6)
    z = seeded(gamma, x * 200 - 100, seed=0)
    assert z.min() == pytest.approx(-100) and z.max() == pytest.approx(100)
