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
    out = _abstract_call(lambda: ViTDetector(CFG, hidden=8, num_classes=2, rngs=nnx.Rngs(0), **common), x)
    grid = (size // 4,) * nd
    assert out["heatmap"].shape == (2, *grid, 2)  # one heat-map channel per object class
    assert out["size"].shape == out["offset"].shape == (2, *grid, nd)
    # an upsampling neck puts the heat map, sizes and offsets on a grid of 2 voxels per cell
    fine = _abstract_call(lambda: ViTDetector(CFG, hidden=8, stride=2, features=4, rngs=nnx.Rngs(0), **common), x)
    assert fine["heatmap"].shape == (2,) + (size // 2,) * nd + (1,)
    assert fine["size"].shape == fine["offset"].shape == (2,) + (size // 2,) * nd + (nd,)


@pytest.mark.parametrize("pool", ["mean", "max", "cls"])
def test_classifier_pooling_of_the_patch_tokens(pool):
    cfg = ModelConfig(variant="Mu/4", cls_token=pool == "cls")
    cls = ViTClassifier(cfg, spatial_dims=2, input_size=8, num_classes=2, pool=pool, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    tokens = np.asarray(cls.encoder(x, deterministic=True), np.float32)  # (2, prefix + 4, 64)
    patches = tokens[:, cls.encoder.num_prefix_tokens:]
    want = {"mean": patches.mean(1), "max": patches.max(1), "cls": tokens[:, 0]}[pool]
    np.testing.assert_allclose(np.asarray(cls.features(x)), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        ViTClassifier(CFG, spatial_dims=2, input_size=8, num_classes=2, pool="median", rngs=nnx.Rngs(0))


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


def test_space_to_depth_folds_each_block_into_channels():
    from medjax.models.heads.detection import _space_to_depth

    x = jnp.arange(2 * 4 * 6 * 2 * 3, dtype=jnp.float32).reshape(2, 4, 6, 2, 3)
    y = np.asarray(_space_to_depth(x, (2, 3, 1)))
    assert y.shape == (2, 2, 2, 2, 18)
    # cell (1, 0, 1) of sample 1 holds voxels x 2..3, y 0..2, z 1, in (dx, dy, dz, channel) order
    want = np.asarray(x)[1, 2:4, 0:3, 1:2].reshape(-1)
    np.testing.assert_array_equal(y[1, 1, 0, 1], want)


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



@pytest.mark.parametrize("factor,cin,cout", [((2, 2, 2), 6, 4), ((2, 2, 1), 3, 5), ((4, 2, 1), 4, 3), ((2, 2), 5, 4)])
def test_unetr_upsampling_equals_conv_transpose(factor, cin, cout):
    """The Dense + depth-to-space upsampling is exactly lax.conv_transpose (via nnx.ConvTranspose) for kernel ==
    stride, with random weights and bias."""
    from medjax.models.heads.unetr import _up

    up = nnx.ConvTranspose(cin, cout, factor, strides=factor, padding="VALID", rngs=nnx.Rngs(1))
    up.bias[...] = jax.random.normal(jax.random.key(2), up.bias[...].shape)
    x = jax.random.normal(jax.random.key(3), (2, *[3 + i for i in range(len(factor))], cin))
    want = up(x)
    ref = jax.lax.conv_transpose(x, up.kernel[...], factor, "VALID",
                                 dimension_numbers=("NDHWC", "DHWIO", "NDHWC") if len(factor) == 3
                                 else ("NHWC", "HWIO", "NHWC")) + up.bias[...]
    got = _up(up, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(want), np.asarray(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cin,cout", [(1, 4), (5, 4), (8, 8), (16, 8), (12, 7)])
def test_unetr_conv3_and_conv1_equal_nnx_conv(cin, cout):
    """The 2D-decomposed 3x3x3 convolution and the matmul 1x1x1 convolution equal nnx.Conv."""
    from medjax.models.heads.unetr import _conv1, _conv3

    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 7, cin))
    conv = nnx.Conv(cin, cout, (3, 3, 3), padding="SAME", use_bias=False, rngs=nnx.Rngs(4))
    np.testing.assert_allclose(np.asarray(_conv3(conv, x)), np.asarray(conv(x)), rtol=1e-4, atol=1e-5)
    one = nnx.Conv(cin, cout, (1, 1, 1), rngs=nnx.Rngs(5))
    one.bias[...] = jax.random.normal(jax.random.key(6), one.bias[...].shape)
    np.testing.assert_allclose(np.asarray(_conv1(one, x)), np.asarray(one(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nd,size", [(3, 8), (2, 16)])
def test_unetr_fast_path_equals_plain_flax_layers(nd, size, monkeypatch):
    """The whole UNETR with its fast convolutions equals the same model run through the plain flax layers."""
    from medjax.models.heads import unetr

    model = UNETR(CFG, spatial_dims=nd, input_size=size, num_classes=3, features=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2,) + (size,) * nd + (1,))
    fast = model(x)
    for name in ("_conv1", "_conv3", "_up", "_group_norm"):
        monkeypatch.setattr(unetr, name, lambda mod, v: mod(v))
    plain = model(x)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(plain), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,channels", [((2, 5, 6, 7), 16), ((3, 9, 4), 12), ((2, 4, 4, 4), 5)])
def test_unetr_group_norm_equals_nnx_group_norm(shape, channels):
    from medjax.models.heads.unetr import _group_norm, _norm

    norm = _norm(channels, nnx.Rngs(0))
    norm.scale[...] = jax.random.normal(jax.random.key(1), (channels,))
    norm.bias[...] = jax.random.normal(jax.random.key(2), (channels,))
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(3), (*shape, channels))
    np.testing.assert_allclose(np.asarray(_group_norm(norm, x)), np.asarray(norm(x)), rtol=1e-4, atol=1e-4)


def test_unetr_cpu_rewrites_run_only_on_the_cpu_backend(monkeypatch):
    """Off the CPU the plain flax convolutions run (the rewrites were measured to help on the CPU only)."""
    from medjax.models.heads import unetr

    conv = nnx.Conv(4, 6, (3, 3, 3), padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
    up = nnx.ConvTranspose(4, 3, (2, 2, 2), strides=(2, 2, 2), padding="VALID", rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (1, 4, 4, 4, 4))
    cpu_conv = jax.make_jaxpr(lambda v: unetr._conv3(conv, v))(x)
    cpu_up = jax.make_jaxpr(lambda v: unetr._up(up, v))(x)
    assert "conv_general_dilated" in str(cpu_conv) and "lhs_dilation=(1, 1)" in str(cpu_conv)  # 2D convs
    assert "conv_general_dilated" not in str(cpu_up)  # a matmul and a reshape
    monkeypatch.setattr(unetr.jax, "default_backend", lambda: "gpu")
    assert not unetr._cpu_rewrites()
    gpu_conv = str(jax.make_jaxpr(lambda v: unetr._conv3(conv, v))(x))
    gpu_up = str(jax.make_jaxpr(lambda v: unetr._up(up, v))(x))
    assert "lhs_dilation=(1, 1, 1)" in gpu_conv and gpu_conv.count("conv_general_dilated") == 1  # one 3D conv
    assert "conv_general_dilated" in gpu_up  # the transposed convolution itself
