"""Random augmentations. Each spatial one is split into a *draw* (random parameters from ``rng``) and a pure
*apply*, so an image and its label receive the same draw (see :mod:`medjax.data.transforms.dictionary`).

All functions take an ``np.random.Generator`` and are deterministic given its state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.data.transforms.spatial import flip, rot90, spatial_ndim


# ----------------------------------------------------------------------------------------------- flips
def draw_flip_axes(rng: np.random.Generator, spatial_dims: int, p: float = 0.5) -> tuple[int, ...]:
    """Spatial axes to flip, each independently with probability ``p``."""
    draws = rng.random(spatial_dims)
    return tuple(int(a) for a in np.flatnonzero(draws < p))


def random_flip(array: np.ndarray, rng: np.random.Generator, *, p: float = 0.5, has_channels: bool = True):
    """Flip each spatial axis with probability ``p``. Returns an array of the same shape."""
    axes = draw_flip_axes(rng, spatial_ndim(array, has_channels), p)
    return flip(array, axes, has_channels=has_channels) if axes else array


# ----------------------------------------------------------------------------------------------- rot90
def draw_rot90(rng: np.random.Generator, spatial_shape: Sequence[int], axes=(0, 1)) -> int:
    """Quarter turns ``k`` in the plane of ``axes``: uniform in 0..3 when the two sides are equal (shape kept),
    else uniform in {0, 2} (a half turn also keeps the shape)."""
    a, b = axes
    if spatial_shape[a] == spatial_shape[b]:
        return int(rng.integers(0, 4))
    return 2 * int(rng.integers(0, 2))


def random_rot90(array: np.ndarray, rng: np.random.Generator, *, axes=(0, 1), has_channels: bool = True):
    """Rotate by a random number of quarter turns in the plane of ``axes``, keeping the shape."""
    n = spatial_ndim(array, has_channels)
    k = draw_rot90(rng, array.shape[:n], axes)
    return rot90(array, k, axes, has_channels=has_channels) if k else array


# ----------------------------------------------------------------------------------------------- affine warp
def _rotation(angles_rad: Sequence[float], n: int) -> np.ndarray:
    if n == 2:
        (t,) = angles_rad
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    r = np.eye(3)
    for axis, t in enumerate(angles_rad):  # rotations about index axes 0, 1, 2 in turn
        c, s = np.cos(t), np.sin(t)
        i, j = [a for a in range(3) if a != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        r = m @ r
    return r


def draw_affine(rng: np.random.Generator, spatial_dims: int, *, max_rotation_deg: float = 10.0,
                max_scale: float = 0.1) -> np.ndarray:
    """A random ``(n, n)`` index-space matrix: rotation(s) uniform in ``±max_rotation_deg`` degrees (one angle
    in 2D, one per axis in 3D) times per-axis scales uniform in ``[1 - max_scale, 1 + max_scale]``."""
    n = spatial_dims
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=1 if n == 2 else 3))
    scales = rng.uniform(1.0 - max_scale, 1.0 + max_scale, size=n)
    return _rotation(angles, n) @ np.diag(scales)


def warp_affine(array: np.ndarray, matrix: np.ndarray, *, order: int = 1, has_channels: bool = True,
                mode: str = "nearest") -> np.ndarray:
    """Warp about the array centre: output voxel ``o`` samples input index ``c + matrix @ (o - c)`` with
    ``c = (S - 1) / 2``. Same shape; ``order`` 1 (images, float32 out) or 0 (labels, dtype kept).

    The matching affine is ``affine @ warp_affine_matrix(matrix, spatial_shape)``.
    """
    from scipy import ndimage

    n = spatial_ndim(array, has_channels)
    matrix = np.asarray(matrix, dtype=np.float64)
    centre = (np.asarray(array.shape[:n], dtype=np.float64) - 1.0) / 2.0
    offset = centre - matrix @ centre
    src = np.asarray(array)
    if order > 0 and src.dtype != np.float64:
        src = src.astype(np.float32, copy=False)

    def one(chan):
        return ndimage.affine_transform(chan, matrix, offset=offset, order=order, mode=mode, prefilter=order > 1)

    if not has_channels:
        return one(src)
    return np.stack([one(src[..., c]) for c in range(src.shape[-1])], axis=-1)


def warp_affine_matrix(matrix: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """``(4, 4)`` index map (output -> input voxel) of :func:`warp_affine`; new affine = affine @ this."""
    n = len(spatial_shape)
    matrix = np.asarray(matrix, dtype=np.float64)
    centre = (np.asarray(spatial_shape, dtype=np.float64) - 1.0) / 2.0
    t = np.eye(4)
    t[:n, :n] = matrix
    t[:n, 3] = centre - matrix @ centre
    return t


def random_affine(array: np.ndarray, rng: np.random.Generator, *, max_rotation_deg: float = 10.0,
                  max_scale: float = 0.1, order: int = 1, has_channels: bool = True) -> np.ndarray:
    """Small random rotation/scale about the centre (:func:`draw_affine` then :func:`warp_affine`); same shape."""
    n = spatial_ndim(array, has_channels)
    matrix = draw_affine(rng, n, max_rotation_deg=max_rotation_deg, max_scale=max_scale)
    return warp_affine(array, matrix, order=order, has_channels=has_channels)


# ----------------------------------------------------------------------------------------------- intensity
def draw_intensity_jitter(rng: np.random.Generator, scale: float = 0.1, shift: float = 0.1):
    """The float32 ``(1 + u, v)`` of :func:`intensity_jitter`: ``u ~ U(-scale, scale)``, ``v ~ U(-shift, shift)``."""
    u = rng.uniform(-scale, scale)
    v = rng.uniform(-shift, shift)
    return np.float32(1.0 + u), np.float32(v)


def intensity_jitter(array: np.ndarray, rng: np.random.Generator, scale: float = 0.1, shift: float = 0.1):
    """``array * (1 + u) + v`` with ``u ~ U(-scale, scale)``, ``v ~ U(-shift, shift)`` (float32, new array)."""
    a, b = draw_intensity_jitter(rng, scale, shift)
    out = np.multiply(np.asarray(array, dtype=np.float32), a, dtype=np.float32)
    out += b
    return out


def gamma(array: np.ndarray, rng: np.random.Generator, log_gamma_range=(-0.3, 0.3)):
    """Gamma ``exp(U(*log_gamma_range))`` applied on the array's own ``[min, max]`` range (float32); the min
    and max are preserved, so ``[0, 1]``-scaled data stays in ``[0, 1]``."""
    g = float(np.exp(rng.uniform(*log_gamma_range)))
    src = np.asarray(array, dtype=np.float32)
    lo, hi = float(src.min()), float(src.max())
    if not hi > lo:
        return src.copy()
    unit = (src - np.float32(lo)) / np.float32(hi - lo)
    out = np.power(np.clip(unit, 0, 1), np.float32(g)) * np.float32(hi - lo) + np.float32(lo)
    return out.astype(np.float32)
