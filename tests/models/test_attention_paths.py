"""Attention speed paths keep the numerics: the plain-XLA core equals jax.nn.dot_product_attention, and padding
the sequence (as done for cuDNN's fused attention) changes neither outputs, gradients nor the MAE loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medjax.config.schema import ModelConfig
from medjax.models.attention import CUDNN_PAD, MultiHeadAttention, dense_attention, padded_attention
from medjax.models.mae import MAE


def _qkv(length, seed=0, shape=(2, None, 4, 16)):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(k, (shape[0], length, *shape[2:])) for k in keys]


@pytest.mark.parametrize("length", [7, 50])
def test_dense_attention_matches_jax(length):
    q, k, v = _qkv(length)
    ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(dense_attention(q, k, v), ref, atol=1e-5)

    def loss(fn, q, k, v):
        return (fn(q, k, v) ** 2).sum()

    g = jax.grad(lambda *a: loss(dense_attention, *a), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *a: loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
                                     *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("length", [50, 55, 64, 197])
def test_padding_does_not_change_attention(length):
    q, k, v = _qkv(length, seed=length)
    plain = padded_attention(q, k, v, implementation="xla")
    padded = padded_attention(q, k, v, implementation="xla", pad_to=CUDNN_PAD)
    assert padded.shape == plain.shape == q.shape
    np.testing.assert_allclose(padded, plain, atol=1e-5)
    gp = jax.grad(lambda q: padded_attention(q, k, v, implementation="xla", pad_to=CUDNN_PAD).sum())(q)
    g = jax.grad(lambda q: padded_attention(q, k, v, implementation="xla").sum())(q)
    np.testing.assert_allclose(gp, g, atol=1e-5)


def test_cudnn_setting_pads_by_default():
    assert MultiHeadAttention(32, 4, implementation="cudnn", rngs=nnx.Rngs(0)).pad_to == CUDNN_PAD
    assert MultiHeadAttention(32, 4, implementation="xla", rngs=nnx.Rngs(0)).pad_to == 0


def test_padding_does_not_change_the_mae_loss_or_gradients():
    cfg = dataclasses.replace(ModelConfig(variant="Mu/8"), decoder_width=32, decoder_depth=1, decoder_heads=2)
    model = MAE(cfg, spatial_dims=3, input_size=(32, 32, 24), rngs=nnx.Rngs(0))  # 48 patches: 12 + CLS visible
    images = jax.random.normal(jax.random.key(5), (2, 32, 32, 24, 1))
    key = jax.random.key(7)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, pad):
        m = nnx.merge(graphdef, p, rest)
        for _, mod in nnx.iter_graph(m):
            if isinstance(mod, MultiHeadAttention):
                mod.pad_to = pad
        return m(images, mask_key=key)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # one compiled program per padding
    l0, g0 = value_and_grad(params, 0)
    l1, g1 = value_and_grad(params, CUDNN_PAD)
    assert np.isfinite(float(l0))
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_cudnn_lowering_needs_a_gpu():
    """The fused custom call can only be checked where cuDNN is present (benchmarks/gpu.sh checks the HLO)."""
    q = jnp.zeros((2, 50, 4, 64), jnp.bfloat16)
    fn = jax.jit(lambda q: padded_attention(q, q, q, implementation="cudnn", pad_to=CUDNN_PAD))
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="cuDNN"):
            fn.trace(q).lower(lowering_platforms=("cuda",))
    else:  # pragma: no cover - GPU machines
        text = fn.lower(q).compile().as_text()
        assert "__cudnn$fmha" in text
