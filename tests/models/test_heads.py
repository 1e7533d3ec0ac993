"""Task heads: output shapes in 2D and 3D, skip depths, detection decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medjax.config.schema import ModelConfig
from medjax.models.heads import UNETR, ViTClassifier, ViTDetector, decode_boxes, skip_layers
from medjax.models.heads.classification import FeatureNorm

CFG = ModelConfig(variant="Mu/4")


def test_skip_layers_quarters_for_16_voxel_patches():
    assert skip_layers(12, (16, 16, 16)) == (3, 6, 9)
    assert skip_layers(12, (16, 16, 8)) == (3, 6, 9)
    assert skip_layers(2, (8, 8)) == (1, 1)
    with pytest.raises(ValueError, match="power-of-two"):
        skip_layers(12, (12, 12, 12))


def _abstract_call(factory, x, **kw):
    """Output shapes of ``factory()(x, **kw)`` by abstract evaluation: no parameter is initialised, nothing is
    compiled or run."""
    graphdef, state = nnx.split(nnx.eval_shape(factory))
    return jax.eval_shape(lambda st, x: nnx.merge(graphdef, st)(x, **kw), state, x)


@pytest.mark.parametrize("nd,size", [(3, 8), (2, 16)])
def test_heads_shapes(nd, size):
    x = jax.ShapeDtypeStruct((2,) + (size,) * nd + (1,), jnp.float32)
    common = dict(spatial_dims=nd, input_size=size)
    seg = _abstract_call(lambda: UNETR(CFG, num_classes=3, features=4, rngs=nnx.Rngs(0), **common), x)
    assert seg.shape == (2,) + (size,) * nd + (3,)
    cls = lambda: ViTClassifier(CFG, num_classes=5, probe_norm=True, rngs=nnx.Rngs(0), **common)  # noqa: E731
    logits = _abstract_call(cls, x, deterministic=False)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    out = _abstract_call(lambda: ViTDetector(CFG, hidden=8, rngs=nnx.Rngs(0), **common), x)
    grid = (size // 4,) * nd
    assert out["heatmap"].shape == (2, *grid, 1)
    assert out["size"].shape == out["offset"].shape == (2, *grid, nd)


def test_detector_heatmap_prior():
    det = ViTDetector(CFG, spatial_dims=3, input_size=8, num_classes=2, hidden=8, rngs=nnx.Rngs(0))
    # focal-loss bias init: every cell starts at a 1% centre probability for every class
    np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(det.heatmap.bias[...])), [0.01, 0.01], rtol=1e-5)


def test_feature_norm_identity_until_statistics_are_set():
    cls = ViTClassifier(CFG, spatial_dims=3, input_size=8, num_classes=2, probe_norm=True, rngs=nnx.Rngs(0))
    assert isinstance(cls.probe_norm, FeatureNorm) and cls.probe_norm.mean[...].shape == (64,)  # Mu width
    norm = FeatureNorm(4)
    f = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
    np.testing.assert_allclose(norm(f), f, rtol=1e-5)
    norm.set_statistics(jnp.ones(4), jnp.full(4, 4.0))
    np.testing.assert_allclose(norm(f), (f - 1) / 2, rtol=1e-5)
    train = norm(f, deterministic=False)
    np.testing.assert_allclose(np.asarray(train).mean(0), 0, atol=1e-5)


def test_decode_boxes_recovers_a_planted_box():
    grid, patch = (4, 4, 4), (8, 8, 8)
    heat = jnp.full((1, *grid, 1), -10.0).at[0, 1, 2, 3, 0].set(5.0)
    size = jnp.zeros((1, *grid, 3)).at[0, 1, 2, 3].set(jnp.log(jnp.array([4.0, 6.0, 8.0])))
    offset = jnp.zeros((1, *grid, 3))  # sigmoid(0) = 0.5: centre in the middle of the cell
    decode = jax.jit(decode_boxes, static_argnums=(1, 2))  # one compilation instead of eager op-by-op
    boxes, scores, classes = decode({"heatmap": heat, "size": size, "offset": offset}, patch, 3)
    centre = (np.array([1, 2, 3]) + 0.5) * 8 - 0.5
    np.testing.assert_allclose(boxes[0, 0], np.r_[centre - [2, 3, 4], centre + [2, 3, 4]], atol=1e-4)
    assert float(scores[0, 0]) == pytest.approx(float(jax.nn.sigmoid(5.0)))
    assert float(scores[0, 1]) < 1e-3 and int(classes[0, 0]) == 0

