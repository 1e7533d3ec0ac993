"""Pre-norm Transformer block: LN -> MHSA -> residual, LN -> MLP(GELU) -> residual."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.attention import MultiHeadAttention
from medjax.models.layers import Dense, DropPath, Dropout, constrain, layer_norm


class Mlp(nnx.Module):
    """(B, L, D) -> (B, L, D): Linear D->mlp_dim, GELU (tanh approximation off), dropout, Linear mlp_dim->D."""

    def __init__(self, width: int, mlp_dim: int, *, dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc1 = Dense(width, mlp_dim, names=("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = Dense(mlp_dim, width, names=("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.drop = Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        h = constrain(jax.nn.gelu(self.fc1(x), approximate=False), ("batch", "length", "mlp"))
        h = self.drop(h, deterministic=deterministic)
        return self.fc2(h)


# model.remat -> jax.checkpoint policy (what the backward pass may keep instead of recomputing)
REMAT_POLICIES = {
    "none": None,
    "full": "nothing_saveable",  # recompute the whole block: least memory
    "dots": "dots_saveable",  # keep matmul outputs, recompute the element-wise ops (LayerNorm, GELU, softmax)
    "dots_no_batch": "dots_with_no_batch_dims_saveable",  # keep the weight matmuls, recompute attention matmuls
}


def remat_policy(name: str):
    """``jax.checkpoint_policies`` entry for ``model.remat`` ``name``; ValueError naming the setting."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat={name!r} is not supported; use one of {sorted(REMAT_POLICIES)}")
    attr = REMAT_POLICIES[name]
    return None if attr is None else getattr(jax.checkpoint_policies, attr)


class Block(nnx.Module):
    """Pre-norm ViT block on tokens (B, L, D); residual stream in ``dtype``, LayerNorm in float32.

    ``remat`` ("none", "full", "dots", "dots_no_batch"; see :data:`REMAT_POLICIES`) recomputes the block's
    activations in the backward pass instead of storing them (less memory, more compute); same values.
    """

    def __init__(self, width: int, heads: int, mlp_dim: int, *, dropout: float = 0.0, drop_path: float = 0.0,
                 dtype=jnp.float32, implementation: str | None = None, norm_eps: float = 1e-6,
                 remat: str = "none", rngs: nnx.Rngs):
        self.dtype = dtype
        remat_policy(remat)  # validate now
        self.remat = remat
        self.norm1 = layer_norm(width, epsilon=norm_eps, rngs=rngs)
        self.attn = MultiHeadAttention(width, heads, dtype=dtype, implementation=implementation, rngs=rngs)
        self.norm2 = layer_norm(width, epsilon=norm_eps, rngs=rngs)
        self.mlp = Mlp(width, mlp_dim, dropout=dropout, dtype=dtype, rngs=rngs)
        self.drop = Dropout(dropout, rngs=rngs)
        self.drop_path = DropPath(drop_path, rngs=rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool = True, return_attention: bool = False):
        """x (B, L, D) -> (B, L, D); with ``return_attention`` also the weights (B, heads, L, L)."""
        if self.remat != "none" and not return_attention:
            fn = nnx.remat(lambda block, v: block._forward(v, deterministic=deterministic, return_attention=False),
                           policy=remat_policy(self.remat))
            return fn(self, x)
        return self._forward(x, deterministic=deterministic, return_attention=return_attention)

    def _forward(self, x: jax.Array, *, deterministic: bool, return_attention: bool):
        x = x.astype(self.dtype)
        h = self.attn(self.norm1(x).astype(self.dtype), return_attention=return_attention)
        h, weights = h if return_attention else (h, None)
        h = self.drop(h, deterministic=deterministic)
        x = x + self.drop_path(h, deterministic=deterministic)
        h = self.mlp(self.norm2(x).astype(self.dtype), deterministic=deterministic)
        h = self.drop(h, deterministic=deterministic)
        x = constrain(x + self.drop_path(h, deterministic=deterministic), ("batch", "length", "embed"))
        return (x, weights) if return_attention else x


def run_blocks(blocks, x: jax.Array, *, deterministic: bool = True, scan: bool = False) -> jax.Array:
    """Apply ``blocks`` (a sequence of :class:`Block`-like modules) to tokens x (B, L, D) in order.

    ``scan``: one ``jax.lax.scan`` over the blocks' parameters stacked along a new leading axis, so XLA compiles
    one block body instead of ``len(blocks)`` copies (much shorter compiles for deep stacks; the same values).
    The parameters keep their per-block layout (checkpoints, weight import/export and PEFT see no difference);
    the stacking happens inside the step. Falls back to the plain loop where a scan cannot express the blocks:
    blocks that differ in structure or static settings (e.g. increasing drop-path rates), or that draw dropout
    random numbers (``deterministic=False`` with RNG state), which a scan would have to thread through.
    """
    blocks = list(blocks)
    if scan and len(blocks) > 1:
        splits = [nnx.split(b) for b in blocks]
        graphdef = splits[0][0]
        same = all(gd == graphdef for gd, _ in splits[1:])
        draws = not deterministic and any(jax.tree.leaves(nnx.state(b, nnx.RngState)) for b in blocks)
        if same and not draws:
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[state for _, state in splits])

            def body(h, state):
                return nnx.merge(graphdef, state)(h, deterministic=deterministic), None

            x, _ = jax.lax.scan(body, x, stacked)
            return x
    for block in blocks:
        x = block(x, deterministic=deterministic)
    return x
