"""Resampling to a target voxel spacing (mm), keeping the field of view and exact geometry.

Grid convention (documented contract):

- Voxel ``i`` covers ``[i - 0.5, i + 0.5]`` in index space; the field of view (FOV) along an axis of ``N``
  voxels of spacing ``s`` mm is ``N * s`` mm, from the voxel edge at index ``-0.5`` to ``N - 0.5``.
- The new grid keeps the **low FOV corner** (the outer edge of voxel 0 on every axis) at the same world
  position, has exactly the requested spacing ``t`` and ``round(N * s / t)`` voxels (at least 1), so its FOV
  differs from the old one by at most half a new voxel at the high end.
- New voxel centre ``j`` lies at old continuous index ``x = (j + 0.5) * t / s - 0.5``; the new affine is
  ``affine @ [[diag(t / s), (t / s - 1) / 2], [0, 1]]``, so ``new_affine @ j == affine @ x`` exactly, for any
  (also oblique, anisotropic) affine: resampling happens along the array axes and the affine columns scale.
- Values are interpolated at ``x`` along each axis (separable; equal to trilinear / nearest interpolation of
  ``scipy.ndimage.map_coordinates`` with ``mode="nearest"``); positions beyond the outer voxel centres take
  the edge value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.config.dims import broadcast
from medjax.data.transforms.spatial import check_affine, spatial_ndim


def resample_geometry(affine, spatial_shape: Sequence[int], spacing: Sequence[float]):
    """New spatial shape, new affine and per-axis zoom ``t / s`` of :func:`resample` (see module docs).

    Args:
      affine: ``(4, 4)`` voxel->world (RAS+, mm); its first ``len(spatial_shape)`` column norms are the spacing.
      spatial_shape: ``(*S)`` voxels.
      spacing: target mm per voxel, one per spatial dim (or a 1-tuple).

    Returns:
      ``(new_shape, new_affine, ratio)`` with ``ratio[i] = spacing[i] / old_spacing[i]``.
    """
    affine = check_affine(affine)
    n = len(spatial_shape)
    target = np.asarray(broadcast(spacing, n, "spacing"), dtype=np.float64)
    if not np.all(target > 0):
        raise ValueError(f"target spacing must be positive mm; got {tuple(target)}")
    old = np.sqrt((affine[:3, :n] ** 2).sum(axis=0))
    if not np.all(old > 0):
        raise ValueError(f"affine has a zero-length voxel axis; spacing {tuple(old)} mm")
    ratio = target / old
    new_shape = tuple(max(1, int(np.round(sz * o / t))) for sz, o, t in zip(spatial_shape, old, target))
    scale = np.eye(4)
    for i in range(n):
        scale[i, i] = ratio[i]
        scale[i, 3] = (ratio[i] - 1.0) / 2.0
    return new_shape, affine @ scale, ratio


def _resample_axis(array: np.ndarray, axis: int, new_size: int, ratio: float, order: int) -> np.ndarray:
    """Interpolate ``array`` along ``axis`` at ``x_j = (j + 0.5) * ratio - 0.5`` for ``j < new_size``."""
    size = array.shape[axis]
    x = (np.arange(new_size, dtype=np.float64) + 0.5) * ratio - 0.5
    if order == 0:
        idx = np.clip(np.floor(x + 0.5), 0, size - 1).astype(np.intp)
        return np.take(array, idx, axis=axis)
    lo = np.clip(np.floor(x), 0, size - 1).astype(np.intp)
    hi = np.minimum(lo + 1, size - 1)
    w = np.clip(x - lo, 0.0, 1.0).astype(array.dtype)
    shape = [1] * array.ndim
    shape[axis] = new_size
    w = w.reshape(shape)
    a = np.take(array, lo, axis=axis)
    b = np.take(array, hi, axis=axis)
    b -= a
    b *= w
    a += b
    return a


def resample(array: np.ndarray, affine, spacing: Sequence[float], *, order: int = 1, has_channels: bool = True):
    """Resample to ``spacing`` mm per voxel, keeping the field of view (see the module docs for the grid).

    Args:
      array: ``(*S)`` or ``(*S, C)`` with 2 or 3 spatial dims.
      affine: ``(4, 4)`` voxel->world (RAS+, mm), axis-aligned or oblique.
      spacing: target mm per voxel along each spatial array axis (1-tuple broadcasts).
      order: 1 linear (images; float output: float64 stays float64, anything else becomes float32),
        0 nearest (labels; dtype and value set kept), >1 spline via ``scipy.ndimage`` (float output as for 1).
      has_channels: whether the last axis is channels (channels are never interpolated).

    Returns:
      ``(array, affine)`` with spatial shape ``round(S * old_spacing / spacing)``.
    """
    n = spatial_ndim(array, has_channels)
    new_shape, new_affine, ratio = resample_geometry(affine, array.shape[:n], spacing)
    out = np.asarray(array)
    if order > 0 and out.dtype != np.float64:
        out = out.astype(np.float32, copy=False)
    if tuple(new_shape) == tuple(array.shape[:n]) and np.allclose(ratio, 1.0, rtol=0, atol=1e-12):
        return out, new_affine
    if order in (0, 1):
        # shrink first: interpolate the axes with the largest size reduction first
        for ax in sorted(range(n), key=lambda a: new_shape[a] / array.shape[a]):
            out = _resample_axis(out, ax, new_shape[ax], float(ratio[ax]), order)
        return out, new_affine
    return _resample_spline(out, new_shape, ratio, order, has_channels), new_affine


def _resample_spline(array, new_shape, ratio, order, has_channels):
    from scipy import ndimage

    offset = (np.asarray(ratio) - 1.0) / 2.0
    chans = [array[..., c] for c in range(array.shape[-1])] if has_channels else [array]
    outs = [
        ndimage.affine_transform(c, np.asarray(ratio), offset=offset, output_shape=tuple(new_shape),
                                 order=order, mode="nearest")
        for c in chans
    ]
    return np.stack(outs, axis=-1) if has_channels else outs[0]
