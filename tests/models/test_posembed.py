"""Sin-cos position embeddings and resizing."""

import jax.numpy as jnp
import numpy as np
import pytest

from medjax.models.posembed import resize_pos_embed, sincos_pos_embed


@pytest.mark.parametrize("width, grid", [(64, (4, 4)), (48, (2, 3, 4)), (64, (2, 2, 2)), (1024, (6, 6, 6))])
def test_sincos_shape_and_distinct(width, grid):
    pe = sincos_pos_embed(width, grid, num_prefix=1)
    n = int(np.prod(grid))
    assert pe.shape == (1, 1 + n, width) and pe.dtype == np.float32
    np.testing.assert_array_equal(pe[0, 0], 0.0)
    body = pe[0, 1:]
    dist = np.linalg.norm(body[:, None] - body[None], axis=-1)
    assert np.all(dist[~np.eye(n, dtype=bool)] > 1e-3)  # every position has its own code
    assert np.abs(body).max() <= 1.0


def test_sincos_axis_layout_2d():
    pe = sincos_pos_embed(8, (3, 2))[0]  # first 4 columns: axis-0 code, last 4: axis-1 code
    np.testing.assert_allclose(pe[0, :4], [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(pe[2, :4], pe[3, :4])  # same row index (patch (1,0) and (1,1))
    np.testing.assert_allclose(pe[2, 4:], pe[0, 4:])  # same column index
    np.testing.assert_allclose(pe[1, 4:], [np.sin(1.0), np.sin(1e-2), np.cos(1.0), np.cos(1e-2)], rtol=1e-6)


def test_sincos_width_errors():
    with pytest.raises(ValueError, match="width 63"):
        sincos_pos_embed(63, (2, 2))
    with pytest.raises(ValueError, match="width 4"):
        sincos_pos_embed(4, (2, 2, 2))


def test_resize_identity_and_shape():
    pe = jnp.asarray(np.random.default_rng(0).normal(size=(1, 1 + 8, 6)).astype(np.float32))
    assert resize_pos_embed(pe, (2, 2, 2), (2, 2, 2)) is pe
    out = resize_pos_embed(pe, (2, 2, 2), (4, 2, 3))
    assert out.shape == (1, 1 + 24, 6)
    np.testing.assert_array_equal(out[0, 0], pe[0, 0])  # CLS kept


def test_resize_linear_on_linear_ramp():
    # a ramp along axis 0 stays a ramp (interior points interpolate linearly)
    grid = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 4, 1), np.float32)
    pe = jnp.asarray(grid.reshape(1, 16, 1))
    out = np.asarray(resize_pos_embed(pe, (4, 4), (8, 4))).reshape(8, 4)
    np.testing.assert_allclose(out[1:7, 0], [0.25, 0.75, 1.25, 1.75, 2.25, 2.75], atol=1e-6)
    np.testing.assert_allclose(out[:, 0], out[:, 3])
