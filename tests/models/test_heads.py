"""Task heads: output shapes in 2D and 3D, skip depths, detection decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medjax.config.schema import ModelConfig
from medjax.models.heads import UNETR, ViTClassifier, ViTDetector, decode_boxes, skip_layers

CFG = ModelConfig(variant="Mu/4")


def test_skip_layers_quarters_for_16_voxel_patches():
    assert skip_layers(12, (16, 16, 16)) == (3, 6, 9)
    assert skip_layers(12, (16, 16, 8)) == (3, 6, 9)
    assert skip_layers(2, (8, 8)) == (1, 1)
    with pytest.raises(ValueError, match="power-of-two"):
        skip_layers(12, (12, 12, 12))


@pytest.mark.parametrize("nd,size", [(3, 8), (2, 16)])
def test_heads_shapes(nd, size):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2,) + (size,) * nd + (1,)), jnp.float32)
    seg = UNETR(CFG, spatial_dims=nd, input_size=size, num_classes=3, features=4, rngs=nnx.Rngs(0))
    assert nnx.jit(lambda m, x: m(x))(seg, x).shape == (2,) + (size,) * nd + (3,)
    cls = ViTClassifier(CFG, spatial_dims=nd, input_size=size, num_classes=5, probe_norm=True, rngs=nnx.Rngs(0))
    logits = cls(x, deterministic=False)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    det = ViTDetector(CFG, spatial_dims=nd, input_size=size, hidden=8, rngs=nnx.Rngs(0))
    out = det(x)
    grid = (size // 4,) * nd
    assert out["heatmap"].shape == (2, *grid, 1)
    assert out["size"].shape == out["offset"].shape == (2, *grid, nd)
    # heat-map prior: every cell starts near 1% centre probability
    np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(out["heatmap"])).mean(), 0.01, rtol=0.5)


def test_feature_norm_identity_until_statistics_are_set():
    cls = ViTClassifier(CFG, spatial_dims=3, input_size=8, num_classes=2, probe_norm=True, rngs=nnx.Rngs(0))
    f = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
    np.testing.assert_allclose(cls.probe_norm(f), f, rtol=1e-5)
    cls.probe_norm.set_statistics(jnp.ones(4), jnp.full(4, 4.0))
    np.testing.assert_allclose(cls.probe_norm(f), (f - 1) / 2, rtol=1e-5)
    train = cls.probe_norm(f, deterministic=False)
    np.testing.assert_allclose(np.asarray(train).mean(0), 0, atol=1e-5)


def test_decode_boxes_recovers_a_planted_box():
    grid, patch = (4, 4, 4), (8, 8, 8)
    heat = jnp.full((1, *grid, 1), -10.0).at[0, 1, 2, 3, 0].set(5.0)
    size = jnp.zeros((1, *grid, 3)).at[0, 1, 2, 3].set(jnp.log(jnp.array([4.0, 6.0, 8.0])))
    offset = jnp.zeros((1, *grid, 3))  # sigmoid(0) = 0.5: centre in the middle of the cell
    boxes, scores, classes = decode_boxes({"heatmap": heat, "size": size, "offset": offset}, patch, top_k=3)
    centre = (np.array([1, 2, 3]) + 0.5) * 8 - 0.5
    np.testing.assert_allclose(boxes[0, 0], np.r_[centre - [2, 3, 4], centre + [2, 3, 4]], atol=1e-4)
    assert float(scores[0, 0]) == pytest.approx(float(jax.nn.sigmoid(5.0)))
    assert float(scores[0, 1]) < 1e-3 and int(classes[0, 0]) == 0
