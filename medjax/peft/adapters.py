"""Bottleneck adapters in every transformer block.

An adapter maps tokens (B, L, D) -> (B, L, D) through ``down`` (D -> adapter_dim), GELU and ``up``
(adapter_dim -> D); ``up`` starts at zero, so an injected model computes exactly the base model at step 0.

- ``serial`` (Pfeiffer et al. 2020, Houlsby et al. 2019 after the feed-forward sublayer): the MLP output ``m``
  becomes ``m + adapter(m)``.
- ``parallel`` (He et al. 2022, AdaptFormer): the MLP output becomes ``mlp(h) + adapter(h)`` for the MLP's input
  ``h`` (the normalised residual stream).

The block's MLP keeps its parameter paths (``blocks/i/mlp/fc1``...) and gains ``blocks/i/mlp/adapter/...``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.block import Mlp
from medjax.models.layers import Dense


class Adapter(nnx.Module):
    """(..., D) -> (..., D): ``up(gelu(down(x)))`` with ``up`` zero-initialised."""

    def __init__(self, width: int, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.down = Dense(width, dim, names=("embed", None), dtype=dtype, rngs=rngs)
        self.up = Dense(dim, width, names=(None, "embed"), dtype=dtype, rngs=rngs)
        self.up.kernel[...] = jnp.zeros_like(self.up.kernel[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.up(jax.nn.gelu(self.down(x), approximate=False))


class AdaptedMlp(Mlp):
    """A block's :class:`~medjax.models.block.Mlp` with an :class:`Adapter` (``mode`` serial or parallel)."""

    def __init__(self, base: Mlp, *, dim: int, mode: str, rngs: nnx.Rngs):
        for k, v in vars(base).items():
            if not k.startswith("_"):
                setattr(self, k, v)
        width = base.fc1.kernel.shape[0]
        self.adapter_mode = mode
        self.adapter = Adapter(width, dim, dtype=base.fc1.dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        m = super().__call__(x, deterministic=deterministic)
        if self.adapter_mode == "parallel":
            return m + self.adapter(x).astype(m.dtype)
        return m + self.adapter(m).astype(m.dtype)


def inject_adapters(encoder, *, dim: int, mode: str, rngs: nnx.Rngs) -> int:
    """Give every block of ``encoder`` (a ViT) an adapter in place; returns the number of blocks adapted."""
    for block in encoder.blocks:
        block.mlp = AdaptedMlp(block.mlp, dim=dim, mode=mode, rngs=rngs)
    return len(encoder.blocks)
