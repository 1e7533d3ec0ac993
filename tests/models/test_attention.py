"""Attention: the explicit-weights path equals jax.nn.dot_product_attention; rows sum to one; bf16 runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medjax.models.attention import MultiHeadAttention, attention_implementation


def test_explicit_weights_match_fused_path():
    attn = MultiHeadAttention(32, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 32))
    fused = attn(x)
    out, weights = attn(x, return_attention=True)
    assert weights.shape == (2, 4, 7, 7) and weights.dtype == jnp.float32
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, fused, atol=1e-5)


def test_weights_match_manual_softmax():
    attn = MultiHeadAttention(16, 2, rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(2), (1, 5, 16))
    _, weights = attn(x, return_attention=True)
    q = jnp.einsum("bld,dhk->bhlk", x, attn.q_kernel[...]) + attn.q_bias[...][None, :, None]
    k = jnp.einsum("bld,dhk->bhlk", x, attn.k_kernel[...]) + attn.k_bias[...][None, :, None]
    manual = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / np.sqrt(8.0), axis=-1)
    np.testing.assert_allclose(weights, manual, atol=1e-5)


def test_bfloat16_compute():
    attn = MultiHeadAttention(32, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert attn.q_kernel[...].dtype == jnp.float32
    x = jax.random.normal(jax.random.key(1), (2, 6, 32))
    y = attn(x)
    y2, w = attn(x, return_attention=True)
    assert y.dtype == jnp.bfloat16 and w.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y2, np.float32), atol=5e-2)
    ref = MultiHeadAttention(32, 4, rngs=nnx.Rngs(0))(x)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.1)


def test_implementation_names():
    assert attention_implementation("auto") is None
    assert attention_implementation("xla") == "xla"
    with pytest.raises(ValueError, match="model.attention='flash'"):
        attention_implementation("flash")
