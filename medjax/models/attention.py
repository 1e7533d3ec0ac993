"""Multi-head self-attention through ``jax.nn.dot_product_attention``, with an explicit-weights path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.layers import constrain, param_init

_IMPLEMENTATIONS = {"auto": None, "xla": "xla", "cudnn": "cudnn"}


def attention_implementation(name: str) -> str | None:
    """Map ``ModelConfig.attention`` ("auto", "xla", "cudnn") to the ``implementation`` argument of
    ``jax.nn.dot_product_attention`` ("auto" -> None: let JAX choose)."""
    try:
        return _IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"model.attention={name!r} is not supported; use one of {sorted(_IMPLEMENTATIONS)}") from None


class MultiHeadAttention(nnx.Module):
    """Self-attention over tokens (B, L, D) -> (B, L, D), computed in ``dtype`` with float32 parameters.

    q/k/v kernels (D, heads, D/heads) named ("embed", "heads", "kv"); out kernel (heads, D/heads, D) named
    ("heads", "kv", "embed"). Softmax runs in float32 on both paths.
    """

    def __init__(self, width: int, heads: int, *, dtype=jnp.float32, implementation: str | None = None,
                 rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"attention width {width} must divide by heads {heads}")
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.dtype = dtype
        self.implementation = implementation
        init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        zeros = nnx.initializers.zeros_init()

        def proj_in():
            return nnx.Param(param_init(init, ("embed", "heads", "kv"))(
                rngs.params(), (width, heads, self.head_dim), jnp.float32))

        def bias_in():
            return nnx.Param(param_init(zeros, ("heads", "kv"))(rngs.params(), (heads, self.head_dim), jnp.float32))

        self.q_kernel, self.k_kernel, self.v_kernel = proj_in(), proj_in(), proj_in()
        self.q_bias, self.k_bias, self.v_bias = bias_in(), bias_in(), bias_in()
        out_init = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        self.out_kernel = nnx.Param(param_init(out_init, ("heads", "kv", "embed"))(
            rngs.params(), (heads, self.head_dim, width), jnp.float32))
        self.out_bias = nnx.Param(param_init(zeros, ("embed",))(rngs.params(), (width,), jnp.float32))

    def _project(self, x, kernel, bias):
        y = jnp.einsum("bld,dhk->blhk", x, kernel[...].astype(self.dtype)) + bias[...].astype(self.dtype)
        return constrain(y, ("batch", "length", "heads", "kv"))

    def __call__(self, x: jax.Array, *, return_attention: bool = False):
        """x (B, L, D) -> (B, L, D); with ``return_attention`` also the weights (B, heads, L, L) float32."""
        x = x.astype(self.dtype)
        q = self._project(x, self.q_kernel, self.q_bias)
        k = self._project(x, self.k_kernel, self.k_bias)
        v = self._project(x, self.v_kernel, self.v_bias)
        if return_attention:
            logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)
            weights = jax.nn.softmax(logits / jnp.sqrt(jnp.float32(self.head_dim)), axis=-1)
            out = jnp.einsum("bhqs,bshk->bqhk", weights.astype(self.dtype), v)
        else:
            weights = None
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
        y = jnp.einsum("blhk,hkd->bld", out.astype(self.dtype), self.out_kernel[...].astype(self.dtype))
        y = constrain(y + self.out_bias[...].astype(self.dtype), ("batch", "length", "embed"))
        return (y, weights) if return_attention else y
