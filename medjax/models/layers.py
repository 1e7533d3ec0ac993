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

How a mesh is applied (flax 0.12, NNX)
--------------------------------------
Rules map logical names to mesh axes, e.g. ``MeshConfig.rules``. Activate them, together with a mesh, around
model construction and the forward pass::

    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        abstract = nnx.eval_shape(lambda: MAE(cfg, spatial_dims=3, input_size=(96,) * 3, rngs=nnx.Rngs(0)))
        graphdef, abs_state = nnx.split(abstract)
        pspecs = nnx.get_partition_spec(abs_state)        # logical names -> mesh PartitionSpecs (rules applied)
        shardings = jax.tree.map(lambda p: NamedSharding(mesh, p), pspecs)
        ...  # jit(init, out_shardings=shardings); the forward pass inside the same context

* Parameter metadata: every annotated ``nnx.Param`` has ``var.get_metadata()["out_sharding"]`` (a tuple of logical
  names, one per array dim). ``nnx.get_partition_spec(state)`` translates it with the active rules.
* Eager sharding: flax shards a Variable at creation when ``eager_sharding`` is on (the default). That needs a
  mesh and rules; :func:`param_init` therefore switches it on only when both a mesh (``jax.set_mesh``) and
  logical rules (``nnx.logical_axis_rules``) are active at construction, and leaves it off otherwise, so models
  build on a single device without any setup.
* Activations: :func:`constrain` applies ``jax.lax.with_sharding_constraint`` (or ``jax.sharding.reshard`` on an
  explicit mesh) with the rules-translated spec when a mesh and rules are active, and is a no-op otherwise.
  Rules may also be passed explicitly (``constrain(x, names, rules=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as _core_spmd
from jax.sharding import PartitionSpec

LogicalNames = tuple[str | None, ...]
Rules = Sequence[tuple[str, Any]]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str) -> jnp.dtype:
    """Map ``ModelConfig.dtype`` ("float32", "bfloat16", "float16") to a jnp dtype; ValueError names the value."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"model.dtype={name!r} is not supported; use one of {sorted(_DTYPES)}") from None


def active_rules() -> tuple[tuple[str, Any], ...]:
    """The logical-axis rules set by ``nnx.logical_axis_rules(...)`` (empty tuple when none)."""
    return tuple(_core_spmd.get_logical_axis_rules() or ())


def _active_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def _mesh_axes(entry: Any) -> Any:
    """Normalise a rule's right-hand side: () or None -> None (replicated); 1-tuples -> the name."""
    if entry is None or entry == ():
        return None
    if isinstance(entry, (tuple, list)):
        return entry[0] if len(entry) == 1 else tuple(entry)
    return entry


def logical_to_spec(names: LogicalNames, rules: Rules) -> PartitionSpec:
    """Translate logical axis names to a mesh ``PartitionSpec`` with ``rules`` ((logical, mesh_axes) pairs).

    Names without a rule, and ``None``, are replicated. A mesh axis already used by an earlier dim is dropped
    from later dims, so with FSDP rules (batch -> (data, fsdp), embed -> fsdp) activations (batch, length, embed)
    shard over the batch only, while parameters (embed, ...) shard over fsdp.
    """
    table = {str(k): v for k, v in rules}
    used: set[str] = set()
    entries = []
    for name in names:
        axes = table.get(name) if name is not None else None
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        axes = tuple(a for a in axes if a not in used)  # a mesh axis shards at most one dim: first dim wins
        used.update(axes)
        entries.append(_mesh_axes(axes))
    return PartitionSpec(*entries)


def constrain(x: jax.Array, names: LogicalNames, *, rules: Rules | None = None) -> jax.Array:
    """Constrain activation ``x`` to the sharding its logical axis ``names`` map to (one name per dim).

    A no-op when no mesh is set (``jax.set_mesh``) or no rules are active/passed, so single-device code and
    tests run unchanged.
    """
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} axis names {names} for an array of rank {x.ndim}")
    mesh = _active_mesh()
    rules = tuple(rules) if rules is not None else active_rules()
    if mesh is None or not rules:
        return x
    spec = logical_to_spec(names, rules)
    if mesh.are_all_axes_explicit:
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, spec)


def param_init(init: Callable, names: LogicalNames) -> Callable:
    """Wrap initializer ``init`` so its ``nnx.Param`` carries logical ``names`` (``out_sharding`` metadata).

    Eager sharding is enabled only when a mesh and logical rules are active at construction (see module doc).
    """
    eager = _active_mesh() is not None and bool(active_rules()) and nnx.using_eager_sharding()
    return nnx.with_partitioning(init, tuple(names), eager_sharding=eager)


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
