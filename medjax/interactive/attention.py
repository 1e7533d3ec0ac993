"""Pure attention maps for ViTs: head fusion, CLS / query-patch attention, rollout, tokens -> voxels.

Conventions (as :mod:`medjax.models`): a sequence holds ``P`` prefix tokens (1 with a CLS token, else 0)
followed by ``L = prod(grid)`` patch tokens in row-major grid order (first spatial axis slowest). One layer's
attention is ``(H, T, T)`` with ``T = P + L``, row ``q`` holding the weights query ``q`` gives every key
(rows sum to 1). Everything here is numpy (float64 internally) and works for 2D and 3D grids; jax arrays are
accepted and converted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

HEAD_FUSIONS = ("mean", "max", "min")


def _as_layer(attn, what: str = "attention") -> np.ndarray:
    """``(H, T, T)`` float64 from ``(H, T, T)``, ``(T, T)`` (one head) or ``(1, H, T, T)`` (batch of one)."""
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"{what} must be (H, T, T) (or (T, T), or (1, H, T, T)); got shape {a.shape}")
    return a


def fuse_heads(attn, head="mean") -> np.ndarray:
    """One ``(T, T)`` map from ``(H, T, T)``: ``head`` an int (that head; negative counts from the end) or
    ``"mean"`` / ``"max"`` / ``"min"`` over heads."""
    a = _as_layer(attn)
    if isinstance(head, (int, np.integer)) and not isinstance(head, bool):
        h = int(head)
        if not -a.shape[0] <= h < a.shape[0]:
            raise ValueError(f"head {h} out of range: this layer has {a.shape[0]} heads")
        return a[h]
    if head in (None, "mean"):
        return a.mean(axis=0)
    if head == "max":
        return a.max(axis=0)
    if head == "min":
        return a.min(axis=0)
    raise ValueError(f"head={head!r}: use a head index or one of {HEAD_FUSIONS}")


def cls_attention(attn, head=None, *, num_prefix: int = 1) -> np.ndarray:
    """Attention the CLS token (query 0) gives each patch token.

    Args:
      attn: one layer, ``(H, T, T)``.
      head: ``None``/``"mean"`` (mean over heads), ``"max"``, ``"min"`` or a head index.
      num_prefix: prefix tokens ``P`` (>= 1; the CLS token is the first).

    Returns:
      ``(T - P,)`` = ``(L,)`` weights on the patch tokens (not renormalised: they sum to 1 minus the weight the
      CLS token puts on the prefix).
    """
    if num_prefix < 1:
        raise ValueError("cls_attention needs a CLS token (num_prefix >= 1); this model has none: use "
                         "query_attention or received_attention")
    return fuse_heads(attn, head)[0, num_prefix:]


def query_attention(attn, query: int, head=None, *, num_prefix: int = 0) -> np.ndarray:
    """Attention that patch token ``query`` (0-based index among the ``L`` patches) gives each patch: ``(L,)``."""
    a = fuse_heads(attn, head)
    length = a.shape[0] - num_prefix
    if not 0 <= int(query) < length:
        raise ValueError(f"query patch {query} out of range: there are {length} patch tokens")
    return a[num_prefix + int(query), num_prefix:]


def received_attention(attn, head=None, *, num_prefix: int = 0) -> np.ndarray:
    """Mean attention each patch receives from all patch queries: ``(L,)`` (column means over patch rows)."""
    a = fuse_heads(attn, head)
    return a[num_prefix:, num_prefix:].mean(axis=0)


def rollout(attentions: Sequence, head_fusion="mean", add_residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020) through the given layers, first to last.

    Per layer ``A = fuse(heads)``; with ``add_residual`` ``A' = 0.5 * (A + I)``; rows are renormalised to sum
    to 1; the result is ``A'_n @ ... @ A'_1`` so row ``q`` says how much each input token flows into output
    token ``q``.

    Args:
      attentions: list of ``(H, T, T)`` (or ``(1, H, T, T)``) weights, one per layer.
      head_fusion: ``"mean"``, ``"max"``, ``"min"`` or a head index.
      add_residual: account for the residual connection (identity) as above.

    Returns:
      ``(T, T)`` float64 whose rows sum to 1.
    """
    if len(attentions) == 0:
        raise ValueError("rollout needs at least one layer of attention")
    result = None
    for i, layer in enumerate(attentions):
        a = fuse_heads(_as_layer(layer, f"attention of layer {i}"), head_fusion)
        if add_residual:
            a = 0.5 * (a + np.eye(a.shape[0]))
        a = a / np.maximum(a.sum(axis=-1, keepdims=True), 1e-12)
        if result is not None and result.shape != a.shape:
            raise ValueError(f"layer {i} has {a.shape[0]} tokens, earlier layers {result.shape[0]}")
        result = a if result is None else a @ result
    return result


def patch_index(voxel: Sequence[float], patch: Sequence[int], grid: Sequence[int]) -> int:
    """Row-major index (among the ``L`` patch tokens) of the patch holding voxel index ``voxel`` (clamped)."""
    patch, grid = tuple(int(p) for p in patch), tuple(int(g) for g in grid)
    if len(voxel) != len(patch) or len(patch) != len(grid):
        raise ValueError(f"voxel {tuple(voxel)}, patch {patch} and grid {grid} need one entry per spatial dim")
    cell = [min(max(int(v) // p, 0), g - 1) for v, p, g in zip(voxel, patch, grid)]
    return int(np.ravel_multi_index(cell, grid))


def attention_to_volume(attn_tokens, grid: Sequence[int], patch: Sequence[int], num_prefix: int = 0, *,
                        mode: str = "nearest") -> np.ndarray:
    """Token weights -> a voxel map on the model input grid.

    Args:
      attn_tokens: ``(P + L,)`` weights per token; the first ``num_prefix`` entries (CLS, ...) are dropped.
      grid: patches per spatial dim (2 or 3 entries), ``L = prod(grid)``; tokens are row-major over it.
      patch: patch size in voxels per spatial dim.
      num_prefix: prefix tokens ``P`` at the start of ``attn_tokens``.
      mode: ``"nearest"`` (each patch's voxels get its token's weight exactly) or ``"linear"`` (bi/trilinear
        between patch centres, edge values held outside the outermost centres).

    Returns:
      ``(*S,)`` float32 with ``S = grid * patch`` voxels, in the model input's voxel order.
    """
    grid, patch = tuple(int(g) for g in grid), tuple(int(p) for p in patch)
    if len(grid) != len(patch) or len(grid) not in (2, 3):
        raise ValueError(f"grid {grid} and patch {patch} need 2 or 3 entries each (one per spatial dim)")
    tokens = np.asarray(attn_tokens, dtype=np.float64).reshape(-1)
    length = math.prod(grid)
    if tokens.size != num_prefix + length:
        raise ValueError(f"{tokens.size} token weights do not match {num_prefix} prefix + {length} patch tokens "
                         f"(grid {grid})")
    cells = tokens[num_prefix:].reshape(grid)
    if mode == "nearest":
        out = cells
        for axis, p in enumerate(patch):
            out = np.repeat(out, p, axis=axis)
        return out.astype(np.float32)
    if mode in ("linear", "trilinear", "bilinear"):
        from scipy import ndimage

        # voxel v lies at (v + 0.5) / p - 0.5 in grid-cell coordinates (cell centres at integers)
        axes = [(np.arange(g * p) + 0.5) / p - 0.5 for g, p in zip(grid, patch)]
        coords = np.stack(np.meshgrid(*axes, indexing="ij"))
        out = ndimage.map_coordinates(cells, coords, order=1, mode="nearest")
        return out.astype(np.float32)
    raise ValueError(f"mode={mode!r}: use 'nearest' or 'linear'")
