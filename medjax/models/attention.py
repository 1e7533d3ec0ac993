"""Multi-head self-attention through ``jax.nn.dot_product_attention``, with an explicit-weights path.

cuDNN's fused (flash) attention supports only some sequence lengths, and an MAE encoder sees e.g. 50 or 55
tokens. With ``model.attention="cudnn"`` the projected q/k/v are zero-padded along the sequence to a multiple of
:data:`CUDNN_PAD` and the padded keys are masked (``key_value_seq_lengths``); the padded query rows are dropped
after the attention. The result is the unpadded attention (tested with the xla implementation on the CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.layers import constrain, param_init

_IMPLEMENTATIONS = {"auto": None, "xla": "xla", "cudnn": "cudnn"}
CUDNN_PAD = 64  # sequence lengths are padded to a multiple of this for cuDNN's fused attention


def attention_padding(name: str) -> int:
    """Sequence padding multiple for ``ModelConfig.attention`` ``name`` (:data:`CUDNN_PAD` for "cudnn", else 0)."""
    return CUDNN_PAD if name == "cudnn" else 0


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_length: int | None = None) -> jax.Array:
    """Plain-XLA attention of q, k, v (B, L, heads, head_dim) -> (B, L, heads, head_dim), softmax in float32.

    The same function as ``jax.nn.dot_product_attention(..., implementation="xla")``, written so XLA does less
    work around the two batched matmuls: q is scaled by 1/sqrt(head_dim) before QK^T (not the (B, heads, L, L)
    logits, whose scale XLA otherwise materialises as a full-size constant in the backward pass), and the
    logits stay in the (B, heads, L, L) layout the matmuls produce. ``kv_length`` masks keys at positions >= it.
    """
    scale = 1.0 / float(q.shape[-1]) ** 0.5
    logits = jnp.einsum("bqhk,bshk->bhqs", q * jnp.asarray(scale, q.dtype), k,
                        preferred_element_type=jnp.float32)
    if kv_length is not None and kv_length < k.shape[1]:
        keep = jnp.arange(k.shape[1]) < kv_length
        logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqs,bshk->bqhk", weights.astype(v.dtype), v)


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str | None = None,
                     pad_to: int = 0) -> jax.Array:
    """``jax.nn.dot_product_attention`` of q, k, v (B, L, heads, head_dim) -> (B, L, heads, head_dim).

    ``pad_to`` > 0 and L not a multiple of it: pad the sequence to the next multiple, mask the padded keys and
    drop the padded query rows (same result as unpadded attention).
    """
    length = q.shape[1]
    extra = pad_to - length % pad_to if pad_to and length % pad_to else 0
    if extra:
        widths = ((0, 0), (0, extra), (0, 0), (0, 0))
        q, k, v = (jnp.pad(t, widths) for t in (q, k, v))
    if implementation == "xla":
        out = dense_attention(q, k, v, kv_length=length if extra else None)
    elif extra:
        lengths = jnp.full((q.shape[0],), length, jnp.int32)
        out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=implementation)
    else:
        out = jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    return out[:, :length] if extra else out


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
                 pad_to: int | None = None, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"attention width {width} must divide by heads {heads}")
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.dtype = dtype
        self.implementation = implementation
        # sequence padding multiple (see the module doc); default: CUDNN_PAD with the cudnn implementation
        self.pad_to = int(pad_to) if pad_to is not None else (CUDNN_PAD if implementation == "cudnn" else 0)
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
            out = padded_attention(q, k, v, implementation=self.implementation, pad_to=self.pad_to)
        y = self._project_out(out)
        return (y, weights) if return_attention else y

    def _project_out(self, out):
        """Per-head outputs (B, L, heads, head_dim) -> (B, L, D) through the out kernel and bias."""
        y = jnp.einsum("blhk,hkd->bld", out.astype(self.dtype), self.out_kernel[...].astype(self.dtype))
        return constrain(y + self.out_bias[...].astype(self.dtype), ("batch", "length", "embed"))
