"""Shared model plumbing: logical-axis annotations, dtypes and small layers.

Logical axes
------------
Models name axes, never mesh axes. Parameters carry their names as ``out_sharding`` metadata through
:func:`param_init` (a thin wrapper of ``nnx.with_partitioning``); activations are constrained through
:func:`constrain`. The names used are:

=========  =====================================================
"batch"    the sample axis of activations
"length"   the token axis of activations and position embeddings
"embed"    the model width (residual stream)
"mlp"      the hidden width of the MLP blocks
"heads"    attention heads
"kv"       the per-head width
"patch"    the flattened patch pixels (prod(patch) * C)
=========  =====================================================

How a mesh is applied
---------------------
One translator, :func:`medjax.parallel.rules.logical_to_spec`, maps names to mesh axes for parameters and
activations alike (re-exported here with :func:`constrain`). Activate a mesh and rules around construction and
the forward pass::

    with medjax.parallel.use_mesh(mesh, rules):      # = jax.set_mesh(mesh) + nnx.logical_axis_rules(rules)
        model = MAE(cfg, spatial_dims=3, input_size=(96,) * 3, rngs=nnx.Rngs(0))   # parameters created sharded
        y = jax.jit(forward)(model, x)                  # constrain(x, names) adds sharding constraints

* Parameter metadata: every annotated ``nnx.Param`` has ``var.get_metadata()["out_sharding"]`` (logical names,
  one per array dim); :func:`medjax.parallel.state_shardings` turns a state's metadata into ``NamedSharding``s
  (what ``jit(init, out_shardings=...)`` and checkpoint restores use).
* Outside a mesh and rules, :func:`param_init` and :func:`constrain` change nothing: models build and run on a
  single device without any setup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.parallel.rules import constrain, logical_to_spec, place_param  # noqa: F401  (one translator, re-exported)

LogicalNames = tuple[str | None, ...]
Rules = Sequence[tuple[str, Any]]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str) -> jnp.dtype:
    """Map ``ModelConfig.dtype`` ("float32", "bfloat16", "float16") to a jnp dtype; ValueError names the value."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"model.dtype={name!r} is not supported; use one of {sorted(_DTYPES)}") from None


def param_init(init: Callable, names: LogicalNames) -> Callable:
    """Wrap initializer ``init`` so its ``nnx.Param`` carries logical ``names`` (``out_sharding`` metadata).

    When a mesh and logical rules are active at construction (:func:`medjax.parallel.use_mesh`), the new value is
    also placed on the sharding :func:`medjax.parallel.rules.logical_to_spec` gives it (the translator
    activations use too); flax's own eager sharding, which translates names differently, stays off.
    """
    names = tuple(names)

    def placed(*args, **kwargs):
        return place_param(init(*args, **kwargs), names)

    return nnx.with_partitioning(placed, names, eager_sharding=False)


def layer_norm(width: int, *, epsilon: float = 1e-6, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis (default eps 1e-6), computed and stored in float32; scale/bias named
    ("embed",)."""
    return nnx.LayerNorm(
        width,
        epsilon=float(epsilon),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scale_init=param_init(nnx.initializers.ones_init(), ("embed",)),
        bias_init=param_init(nnx.initializers.zeros_init(), ("embed",)),
        rngs=rngs,
    )


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` over the last axis, in ``dtype`` with float32 parameters.

    kernel (in, out) named ``names``; bias (out,) named ``names[-1:]``. Xavier-uniform kernel, zero bias.
    """

    def __init__(self, in_features: int, out_features: int, *, names: LogicalNames, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        init = nnx.initializers.xavier_uniform()
        self.kernel = nnx.Param(param_init(init, names)(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(param_init(nnx.initializers.zeros_init(), names[-1:])(
            rngs.params(), (out_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        return x @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


class DropPath(nnx.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``rate`` (rescaled by 1/(1-rate)).

    Input (B, L, D) tokens. Identity (and no RNG state) when ``rate == 0``, and when ``deterministic``.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = float(rate)
        self.dropout = nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs) if rate > 0 else None

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        if self.dropout is None or deterministic:
            return x
        return self.dropout(x, deterministic=False)


class Dropout(nnx.Module):
    """Element-wise dropout; identity (and no RNG state) when ``rate == 0``."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(rate, rngs=rngs) if rate > 0 else None

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        if self.dropout is None or deterministic:
            return x
        return self.dropout(x, deterministic=False)
