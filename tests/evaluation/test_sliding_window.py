"""Sliding-window inference: coverage, blending, padding, 2D/3D, batches, one compilation."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.evaluation.sliding_window import importance_map, sliding_window_inference, window_starts

RNG = np.random.default_rng(0)
W_PROJ = RNG.standard_normal((2, 3)).astype(np.float32)


def _pointwise(x, w):
    """Per-voxel map (C -> K channels): translation-equivariant with no spatial context."""
    return jnp.tanh(x @ w)


def _conv3(x, k):
    """3x3(x3) 'SAME' convolution (zero padding), channels last."""
    nd = x.ndim - 2
    dn = ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NDHWC", "DHWIO", "NDHWC")
    return jax.lax.conv_general_dilated(x, k, (1,) * nd, "SAME", dimension_numbers=dn)


def test_window_starts_cover_and_clamp():
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(11, 4, 0.5) == [0, 2, 4, 6, 7]  # last clamped to 11 - 4
    assert window_starts(10, 4, 0.0) == [0, 4, 6]
    assert window_starts(4, 4, 0.9) == [0]
    assert window_starts(5, 3, 0.9) == [0, 1, 2]  # stride never below 1
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 4, 1.0)


def test_importance_map():
    g = importance_map((5, 4, 3))
    assert g.shape == (5, 4, 3) and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0) and g.min() > 0
    np.testing.assert_allclose(g, g[::-1, ::-1, ::-1], rtol=1e-6)  # symmetric about the centre
    assert g[2, 1, 1] == pytest.approx(g.max())
    # separable Gaussian: along axis 0, sigma = 0.125 * 5, offset 2 from the centre
    assert g[0, 1, 1] / g[2, 1, 1] == pytest.approx(np.exp(-0.5 * (2 / 0.625) ** 2), rel=1e-5)
    np.testing.assert_array_equal(importance_map((3, 3), "constant"), np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="mode"):
        importance_map((3, 3), "linear")


@pytest.mark.parametrize("overlap, batch_size, mode", [(0.0, 1, "constant"), (0.25, 3, "gaussian"),
                                                      (0.5, 4, "constant"), (0.8, 5, "gaussian")])
def test_pointwise_equals_full_pass_3d(mode, overlap, batch_size):
    x = RNG.standard_normal((11, 9, 7, 2)).astype(np.float32)  # odd sizes, not multiples of the window
    out = sliding_window_inference(x, (5, 4, 6), _pointwise, overlap=overlap, batch_size=batch_size, mode=mode,
                                   fn_args=(W_PROJ,))
    assert out.shape == (11, 9, 7, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.tanh(x @ W_PROJ), rtol=1e-5, atol=1e-6)


def test_pointwise_equals_full_pass_2d_and_batched():
    x = RNG.standard_normal((3, 13, 6, 2)).astype(np.float32)  # (B, X, Y, C)
    out = sliding_window_inference(x, (4, 4), _pointwise, overlap=0.5, batch_size=4, fn_args=(W_PROJ,))
    assert out.shape == (3, 13, 6, 3)
    np.testing.assert_allclose(np.asarray(out), np.tanh(x @ W_PROJ), rtol=1e-5, atol=1e-6)
    single = sliding_window_inference(x[1], (4, 4), _pointwise, overlap=0.5, batch_size=4, fn_args=(W_PROJ,))
    assert single.shape == (13, 6, 3)
    np.testing.assert_allclose(np.asarray(single), np.asarray(out[1]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape, window", [((8, 8, 8, 1), (8, 8, 8)), ((6, 7, 5, 1), (8, 8, 8)),
                                           ((9, 5, 1), (9, 8))])
def test_conv_equals_full_pass_when_window_covers_volume(shape, window):
    # one window (after zero padding, which matches the conv's own zero padding) sees the whole image
    x = RNG.standard_normal(shape).astype(np.float32)
    nd = len(window)
    k = RNG.standard_normal((3,) * nd + (1, 2)).astype(np.float32)
    out = sliding_window_inference(x, window, _conv3, overlap=0.5, batch_size=2, fn_args=(k,))
    full = _conv3(jnp.asarray(x)[None], k)[0]
    assert out.shape == shape[:-1] + (2,)
    np.testing.assert_allclose(np.asarray(out), np.asarray(full), rtol=1e-5, atol=1e-5)


def _reference_blend(x, window, fn, overlap, mode):
    """Straightforward numpy loop: weighted sum of window predictions over the sum of weights."""
    spatial = x.shape[:-1]
    w = importance_map(window, mode)
    acc, wsum = None, np.zeros(spatial + (1,), np.float64)
    for start in itertools.product(*(window_starts(s, k, overlap) for s, k in zip(spatial, window))):
        sl = tuple(slice(a, a + k) for a, k in zip(start, window))
        p = np.asarray(fn(jnp.asarray(x[sl][None])))[0].astype(np.float64)
        if acc is None:
            acc = np.zeros(spatial + (p.shape[-1],), np.float64)
        acc[sl] += p * w[..., None]
        wsum[sl] += w[..., None]
    return acc / wsum


def _position_dependent(x):
    """Depends on where a voxel sits in its window (a ramp along axis 1), so the blending matters."""
    ramp = jnp.arange(x.shape[1], dtype=jnp.float32).reshape((1, -1) + (1,) * (x.ndim - 2))
    return jnp.concatenate([x + ramp, x * 2.0], axis=-1)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_blending_matches_reference_loop(mode):
    x = RNG.standard_normal((10, 7, 9, 1)).astype(np.float32)
    out = sliding_window_inference(x, (4, 5, 4), _position_dependent, overlap=0.4, batch_size=3, mode=mode)
    ref = _reference_blend(x, (4, 5, 4), _position_dependent, 0.4, mode)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_compiled_once_for_same_shapes():
    traces = []

    def fn(x, w):
        traces.append(x.shape)  # runs only while tracing
        return x @ w

    x = RNG.standard_normal((9, 9, 9, 2)).astype(np.float32)
    sliding_window_inference(x, (4, 4, 4), fn, overlap=0.5, batch_size=3, fn_args=(W_PROJ,))
    # traced while compiling (output shape and the loop body), always on one window batch (3, *window, C)
    assert traces and all(s == (3, 4, 4, 4, 2) for s in traces)
    n = len(traces)
    for k in range(3):  # new values, same shapes: the compiled program is reused, nothing is traced again
        sliding_window_inference(x + k, (4, 4, 4), fn, overlap=0.5, batch_size=3, fn_args=(W_PROJ * k,))
    assert len(traces) == n
    # other image sizes (and a batch of two): only the gather and the blending depend on the image shape; the
    # model is not traced (so not compiled) again
    for shape in [(5, 12, 7, 2), (2, 9, 4, 6, 2)]:
        y = RNG.standard_normal(shape).astype(np.float32)
        out = sliding_window_inference(y, (4, 4, 4), fn, overlap=0.5, batch_size=3, fn_args=(W_PROJ,))
        np.testing.assert_allclose(np.asarray(out), y @ W_PROJ, rtol=1e-5, atol=1e-5)
    assert len(traces) == n


def test_errors():
    x = np.zeros((6, 6, 6, 1), np.float32)
    with pytest.raises(ValueError, match="window"):
        sliding_window_inference(x[..., 0, 0], (4, 4, 4), _pointwise)
    with pytest.raises(ValueError, match="predict_fn must map"):
        sliding_window_inference(x, (4, 4, 4), lambda v: v[:, :2])


def test_flax_nnx_model_through_fn_args():
    # the documented pattern: parameters travel as fn_args (program arguments), the graph is static
    from flax import nnx

    model = nnx.Conv(1, 2, kernel_size=(3, 3, 3), padding="SAME", rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def predict(x, state):
        return nnx.merge(graphdef, state)(x)

    x = RNG.standard_normal((6, 5, 7, 1)).astype(np.float32)
    out = sliding_window_inference(x, (8, 8, 8), predict, fn_args=(state,))
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(jnp.asarray(x)[None])[0]), rtol=1e-5,
                               atol=1e-5)
