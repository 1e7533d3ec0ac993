"""Patch embedding for 2D and 3D images from one code path.

An image (B, *S, C) (S: 2 or 3 spatial sizes, channels last) is cut into non-overlapping patches of ``patch``
pixels/voxels, flattened in (p_1, ..., p_n, C) order, and projected by a Linear to the model width; this is the
same map as a strided convolution with kernel = stride = patch. Patches are ordered row-major over the patch grid
(first spatial axis slowest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.layers import Dense, constrain


def patch_grid(input_size: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """Patches per spatial dim for ``input_size``; ValueError naming both sizes unless each divides by the patch."""
    input_size, patch = tuple(int(s) for s in input_size), tuple(int(p) for p in patch)
    if len(input_size) != len(patch):
        raise ValueError(f"input size {input_size} has {len(input_size)} spatial dims but patch {patch} has "
                         f"{len(patch)}")
    if any(s % p for s, p in zip(input_size, patch)):
        raise ValueError(f"input size {input_size} does not divide by patch {patch}; use a crop size that is a "
                         f"multiple of the patch size")
    return tuple(s // p for s, p in zip(input_size, patch))


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
    """(B, *S, C) -> (B, L, prod(patch) * C) with L = prod(S // patch); each row is one patch, (p..., C) order."""
    patch = tuple(patch)
    n = len(patch)
    if x.ndim != n + 2:
        raise ValueError(f"patchify: expected (B, *S, C) with {n} spatial dims, got shape {x.shape}")
    b, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    grid = patch_grid(spatial, patch)
    shape = [b]
    for g, p in zip(grid, patch):
        shape += [g, p]
    x = x.reshape(*shape, c)
    # (B, g1, p1, g2, p2, ..., C) -> (B, g1, g2, ..., p1, p2, ..., C)
    perm = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [2 * n + 1]
    x = x.transpose(perm)
    return x.reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(tokens: jax.Array, patch: Sequence[int], grid: Sequence[int], channels: int) -> jax.Array:
    """(B, L, prod(patch) * C) -> (B, *(grid * patch), C); the exact inverse of :func:`patchify`."""
    patch, grid = tuple(patch), tuple(grid)
    n = len(patch)
    b, length, width = tokens.shape
    if length != math.prod(grid) or width != math.prod(patch) * channels:
        raise ValueError(f"unpatchify: tokens {tokens.shape} do not match grid {grid}, patch {patch}, "
                         f"channels {channels}")
    x = tokens.reshape(b, *grid, *patch, channels)
    # (B, g1, ..., gn, p1, ..., pn, C) -> (B, g1, p1, ..., gn, pn, C)
    perm = [0]
    for i in range(n):
        perm += [1 + i, 1 + n + i]
    perm.append(2 * n + 1)
    x = x.transpose(perm)
    return x.reshape(b, *(g * p for g, p in zip(grid, patch)), channels)


class PatchEmbed(nnx.Module):
    """(B, *S, C) -> (B, L, D) tokens: patchify then a Linear (kernel named ("patch", "embed"))."""

    def __init__(self, patch: Sequence[int], in_channels: int, width: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.patch = tuple(int(p) for p in patch)
        self.in_channels = int(in_channels)
        self.proj = Dense(math.prod(self.patch) * self.in_channels, width, names=("patch", "embed"), dtype=dtype,
                          rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"PatchEmbed: input has {x.shape[-1]} channels (shape {x.shape}) but the model was "
                             f"built for in_channels={self.in_channels}")
        tokens = self.proj(patchify(x, self.patch))
        return constrain(tokens, ("batch", "length", "embed"))
