"""Position embeddings for patch grids in 2D and 3D: fixed sin-cos and resizing for other input sizes."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _axis_widths(width: int, n_axes: int) -> list[int]:
    """Split ``width`` into ``n_axes`` even chunks (the first axes take the leftover pairs)."""
    if width % 2 or width < 2 * n_axes:
        raise ValueError(f"sin-cos position embedding: width {width} must be even and at least {2 * n_axes} for a "
                         f"{n_axes}D grid (the standard layout needs width divisible by {2 * n_axes})")
    base = (width // (2 * n_axes)) * 2
    extra_pairs = (width - base * n_axes) // 2
    return [base + (2 if i < extra_pairs else 0) for i in range(n_axes)]


def _sincos_1d(width: int, positions: np.ndarray) -> np.ndarray:
    """(N,) positions -> (N, width): [sin(pos * w_k), cos(pos * w_k)] with w_k = 1 / 10000^(k / (width/2))."""
    omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
    angles = positions.astype(np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


@functools.lru_cache(maxsize=64)
def _sincos_cached(width: int, grid: tuple[int, ...], num_prefix: int, axes: tuple[int, ...] = ()) -> np.ndarray:
    coords = np.meshgrid(*(np.arange(g) for g in grid), indexing="ij")  # row-major grid order, as patchify
    coords = [coords[a] for a in axes] if axes else coords
    parts = [_sincos_1d(w, c.reshape(-1)) for w, c in zip(_axis_widths(width, len(grid)), coords)]
    pe = np.concatenate(parts, axis=1)
    if num_prefix:
        pe = np.concatenate([np.zeros((num_prefix, width)), pe], axis=0)
    pe = pe[None].astype(np.float32)
    pe.setflags(write=False)
    return pe


def sincos_pos_embed(width: int, grid: Sequence[int], *, num_prefix: int = 0,
                     axes: Sequence[int] = ()) -> np.ndarray:
    """Fixed sin-cos embedding (1, num_prefix + prod(grid), width) float32 for a 2D or 3D patch grid.

    The width is split evenly across the grid axes (each half sin, half cos); prefix (CLS) rows are zero.
    Row order matches :func:`medjax.models.patch_embed.patchify`. ``axes`` orders the channel blocks by grid
    axis (default: axis 0 first); the MAE reference and Hugging Face ViTMAE use ``(1, 0)`` in 2D, MONAI
    ``(1, 0)`` in 2D and ``(1, 0, 2)`` in 3D. The returned array is read-only (cached).
    """
    grid = tuple(int(g) for g in grid)
    axes = tuple(int(a) for a in axes)
    if axes and sorted(axes) != list(range(len(grid))):
        raise ValueError(f"sin-cos position embedding: axes {axes} must be a permutation of 0..{len(grid) - 1}")
    return _sincos_cached(int(width), grid, int(num_prefix), axes)


def resize_pos_embed(pe: jax.Array, old_grid: Sequence[int], new_grid: Sequence[int]) -> jax.Array:
    """Resize a (1, P + prod(old_grid), D) position embedding to (1, P + prod(new_grid), D).

    The grid part is interpolated linearly (bi/trilinear, half-pixel centres); the P prefix rows (CLS) are kept.
    Returns ``pe`` unchanged when the grids match.
    """
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if len(old_grid) != len(new_grid):
        raise ValueError(f"resize_pos_embed: grids {old_grid} and {new_grid} have different numbers of dims")
    if pe.ndim != 3 or pe.shape[0] != 1:
        raise ValueError(f"resize_pos_embed: expected (1, tokens, D), got shape {pe.shape}")
    num_prefix = pe.shape[1] - math.prod(old_grid)
    if num_prefix < 0:
        raise ValueError(f"resize_pos_embed: {pe.shape[1]} tokens cannot hold grid {old_grid}")
    if old_grid == new_grid:
        return pe
    width = pe.shape[-1]
    prefix, grid_part = pe[:, :num_prefix], pe[0, num_prefix:]
    grid_part = grid_part.reshape(*old_grid, width)
    resized = jax.image.resize(grid_part.astype(jnp.float32), (*new_grid, width), method="linear")
    resized = resized.reshape(1, math.prod(new_grid), width).astype(pe.dtype)
    return jnp.concatenate([jnp.asarray(prefix), resized], axis=1)
