"""Intensity normalisation: CT windows, foreground z-score, percentile scaling."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.data.transforms import ct_window, percentile_scale, zscore_foreground


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 6), (4, 5, 6, 2)])
def test_ct_window_clips_and_scales(shape):
    hu = np.linspace(-2000, 3000, int(np.prod(shape))).reshape(shape).astype(np.int16)
    out = ct_window(hu, -1000, 1000)
    assert out.dtype == np.float32 and out.shape == shape
    expected = (np.clip(hu.astype(np.float64), -1000, 1000) + 1000) / 2000
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(ct_window(np.array([40.0]), -160, 240), [0.5])
    with pytest.raises(ValueError, match="hu_max > hu_min"):
        ct_window(hu, 100, 100)


def test_zscore_foreground_default_mask_and_background_zero():
    rng = np.random.default_rng(0)
    arr = np.zeros((8, 9, 10), np.float32)
    arr[2:6, 2:7, 3:8] = rng.normal(300.0, 40.0, size=(4, 5, 5))
    out = zscore_foreground(arr)
    fg = arr > 0
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[fg].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(out[fg].std(), 1, atol=1e-5)
    assert (out[~fg] == 0).all()


def test_zscore_given_mask_per_channel_and_degenerate_cases():
    rng = np.random.default_rng(1)
    arr = rng.normal(5.0, 2.0, size=(6, 7, 2)).astype(np.float32)
    arr[..., 1] = arr[..., 1] * 10 + 100
    mask = np.zeros((6, 7), bool)
    mask[1:5, 1:6] = True
    out = zscore_foreground(arr, mask, has_channels=True)
    for c in range(2):
        np.testing.assert_allclose(out[..., c][mask].mean(), 0, atol=1e-5)
        np.testing.assert_allclose(out[..., c][mask].std(), 1, atol=1e-5)
        assert (out[..., c][~mask] == 0).all()
    assert (zscore_foreground(np.zeros((3, 3, 3))) == 0).all()  # empty foreground
    assert (zscore_foreground(np.full((3, 3), 7.0)) == 0).all()  # constant: std 0 counts as 1
    with pytest.raises(ValueError, match="mask shape"):
        zscore_foreground(arr, mask[:-1], has_channels=True)


def test_percentile_scale():
    arr = np.arange(1000.0).reshape(10, 10, 10)
    out = percentile_scale(arr, 10, 90)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    lo, hi = np.percentile(arr, [10, 90])
    np.testing.assert_allclose(out, np.clip((arr - lo) / (hi - lo), 0, 1), atol=1e-6)
    two = np.stack([arr, arr * 5 - 3], axis=-1)
    out2 = percentile_scale(two, has_channels=True)
    np.testing.assert_allclose(out2[..., 0], out2[..., 1], atol=1e-5)
    assert (percentile_scale(np.ones((4, 4))) == 0).all()
    with pytest.raises(ValueError, match="percentiles"):
        percentile_scale(arr, 50, 50)


def test_zscore_foreground_threshold_is_explicit():
    # a CT-like volume in HU: air -1000, fat -100, soft tissue 40. The default foreground (x > 0) keeps only the
    # soft tissue; threshold=-500 keeps fat and tissue; None keeps every voxel.
    hu = np.full((6, 6, 6), -1000.0, np.float32)
    hu[1:5, 1:5, 1:5] = -100.0
    hu[2:4, 2:4, 2:4] = 40.0
    default = zscore_foreground(hu)
    assert (default[hu == -100.0] == 0).all() and (default[hu == 40.0] == 0).all()  # one value: std 1, mean 40
    body = zscore_foreground(hu, threshold=-500.0)
    fg = hu > -500
    np.testing.assert_allclose(body[fg].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(body[fg].std(), 1, atol=1e-5)
    assert (body[~fg] == 0).all() and (body[hu == 40.0] > 0).all() and (body[hu == -100.0] < 0).all()
    every = zscore_foreground(hu, threshold=None)
    np.testing.assert_allclose(every, (hu - hu.mean()) / hu.std(), atol=1e-5)
    mask = hu > -500
    np.testing.assert_array_equal(zscore_foreground(hu, mask), body)
    with pytest.raises(ValueError, match="either mask= or threshold="):
        zscore_foreground(hu, mask, threshold=-500.0)
    with pytest.raises(ValueError, match="finite"):
        zscore_foreground(hu, threshold=float("nan"))
