"""Exact spatial transforms: reorientation, flips, 90-degree rotations, crops and pads.

Every function works on 2D ``(X, Y[, C])`` and 3D ``(X, Y, Z[, C])`` arrays, keyed on the number of spatial
dims (``array.ndim`` minus one when ``has_channels``). Affines are ``(4, 4)`` float64 voxel-index -> world
(RAS+, mm) matrices; for 2D arrays the third column is the (unused) slice-normal axis and is left untouched.

Functions that return ``(array, new_affine)`` keep every voxel's world coordinate: the value at new index
``v'`` came from old index ``v``, and ``new_affine @ v' == affine @ v`` exactly (only integer index maps are
involved, so the bookkeeping is exact to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.config.dims import broadcast

_AXIS_LETTERS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


# ----------------------------------------------------------------------------------------------- helpers
def spatial_ndim(array: np.ndarray, has_channels: bool = True) -> int:
    """Number of spatial dims of ``array`` (2 or 3); raises ``ValueError`` otherwise."""
    n = array.ndim - (1 if has_channels else 0)
    if n not in (2, 3):
        kind = "(*S, C)" if has_channels else "(*S,)"
        raise ValueError(
            f"expected a 2D or 3D array laid out {kind}; got shape {tuple(array.shape)} "
            f"(has_channels={has_channels}); pass has_channels to match the layout"
        )
    return n


def check_affine(affine) -> np.ndarray:
    """Return ``affine`` as a ``(4, 4)`` float64 array; raises ``ValueError`` on another shape."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4) voxel->world (RAS+, mm); got shape {a.shape}")
    return a


def translation(offset: Sequence[float]) -> np.ndarray:
    """``(4, 4)`` index-space translation by ``offset`` voxels (missing trailing axes: 0)."""
    t = np.eye(4)
    t[: len(offset), 3] = offset
    return t


def _channel_tail(array: np.ndarray, n: int) -> tuple[int, ...]:
    return tuple(range(n, array.ndim))


def _permute_flip_matrix(spatial_shape: Sequence[int], perm: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """``(4, 4)`` index map new -> old of :func:`_permute_flip`; the new affine is ``affine @ this``."""
    t = np.eye(4)
    n = len(spatial_shape)
    t[:n, :n] = 0.0
    for j in range(n):
        src = perm[j]
        t[src, j] = -1.0 if flips[j] else 1.0
        if flips[j]:
            t[src, 3] = spatial_shape[src] - 1
    return t


def _permute_flip(array, affine, perm: Sequence[int], flips: Sequence[bool], has_channels: bool):
    """Transpose spatial axes by ``perm`` (new axis j = old axis perm[j]), then flip new axes where ``flips``.

    Returns ``(view, new_affine)``; ``new_affine`` is ``None`` when ``affine`` is ``None``.
    """
    n = spatial_ndim(array, has_channels)
    out = np.transpose(array, tuple(perm) + _channel_tail(array, n))
    flip_axes = tuple(j for j in range(n) if flips[j])
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    if affine is None:
        return out, None
    return out, check_affine(affine) @ _permute_flip_matrix(array.shape[:n], perm, flips)


# ----------------------------------------------------------------------------------------------- reorient
def parse_orientation(code: str) -> list[tuple[int, int]]:
    """``"RAS"`` -> ``[(world_axis, sign), ...]`` per array axis; raises ``ValueError`` on a bad code."""
    code = str(code).upper()
    pairs = [_AXIS_LETTERS.get(c) for c in code]
    if len(code) != 3 or None in pairs or sorted(p[0] for p in pairs) != [0, 1, 2]:
        raise ValueError(
            f"orientation code {code!r} is invalid: use three letters, one of R/L, A/P and S/I each "
            "(e.g. 'RAS', 'LPS', 'PIR')"
        )
    return pairs


def reorient(array: np.ndarray, affine, target: str = "RAS", *, has_channels: bool = True):
    """Permute and flip array axes so they point towards ``target`` (e.g. ``"RAS"``, ``"LPS"``).

    Args:
      array: ``(*S)`` or ``(*S, C)`` with 2 or 3 spatial dims.
      affine: ``(4, 4)`` voxel->world (RAS+, mm).
      target: orientation code; letter i names the world direction array axis i increases towards.
      has_channels: whether the last axis is channels.

    Returns:
      ``(array, affine)``: a view with permuted/flipped axes and the matching affine (exact; no resampling).
      Oblique affines are handled: each array axis is assigned its nearest world axis
      (``nibabel.orientations.io_orientation``) and the affine keeps the exact obliquity.
      For 2D arrays only the two in-plane axes are reordered/flipped, following the order of their world
      axes in ``target`` (e.g. a sagittal slice with axes along A and S becomes "AS"-ordered for "RAS").
    """
    from nibabel.orientations import io_orientation

    affine = check_affine(affine)
    n = spatial_ndim(array, has_channels)
    target_pairs = parse_orientation(target)
    position = {w: i for i, (w, _) in enumerate(target_pairs)}
    direction = {w: s for w, s in target_pairs}
    ornt = io_orientation(affine)  # per array axis (of 3): (world axis, sign)
    if np.isnan(ornt[:n]).any():
        raise ValueError(f"affine has a degenerate (zero) voxel axis; cannot reorient:\n{affine}")
    world = [int(ornt[i, 0]) for i in range(n)]
    signs = [int(ornt[i, 1]) for i in range(n)]
    perm = sorted(range(n), key=lambda i: position[world[i]])
    flips = [signs[perm[j]] != direction[world[perm[j]]] for j in range(n)]
    return _permute_flip(array, affine, perm, flips, has_channels)


# ----------------------------------------------------------------------------------------------- flips/rotations
def _check_axes(axes, n: int) -> tuple[int, ...]:
    axes = (axes,) if np.isscalar(axes) else tuple(axes)
    out = []
    for a in axes:
        a = int(a)
        if not -n <= a < n:
            raise ValueError(f"spatial axis {a} out of range for {n} spatial dims")
        out.append(a % n)
    return tuple(out)


def _flip_params(n: int, axes) -> tuple[list[int], list[bool]]:
    axes = _check_axes(axes, n)
    return list(range(n)), [j in axes for j in range(n)]


def _rot90_params(n: int, k: int, axes) -> tuple[list[int], list[bool]]:
    a, b = _check_axes(axes, n)
    if a == b:
        raise ValueError(f"rot90 needs two different spatial axes; got {axes}")
    k = int(k) % 4
    perm = list(range(n))
    flips = [False] * n
    if k in (1, 3):
        perm[a], perm[b] = b, a
    if k == 1:  # same as np.rot90(k=1, axes=(a, b)): transpose, then flip the new axis a
        flips[a] = True
    elif k == 2:
        flips[a] = flips[b] = True
    elif k == 3:
        flips[b] = True
    return perm, flips


def flip(array: np.ndarray, axes, *, has_channels: bool = True) -> np.ndarray:
    """Reverse ``array`` along the given spatial ``axes`` (int or tuple). Returns a view, same shape."""
    n = spatial_ndim(array, has_channels)
    perm, flips = _flip_params(n, axes)
    return _permute_flip(array, None, perm, flips, has_channels)[0]


def flip_affine(affine, axes, spatial_shape: Sequence[int]) -> np.ndarray:
    """The affine of ``flip(array, axes)`` for an array of ``spatial_shape`` with ``affine``."""
    n = len(spatial_shape)
    perm, flips = _flip_params(n, axes)
    return check_affine(affine) @ _permute_flip_matrix(spatial_shape, perm, flips)


def rot90(array: np.ndarray, k: int, axes=(0, 1), *, has_channels: bool = True) -> np.ndarray:
    """Rotate by ``k`` quarter turns in the plane of spatial ``axes`` (as ``np.rot90``, first axis towards the
    second). Returns a view; the two axes swap sizes when ``k`` is odd."""
    n = spatial_ndim(array, has_channels)
    perm, flips = _rot90_params(n, k, axes)
    return _permute_flip(array, None, perm, flips, has_channels)[0]


def rot90_affine(affine, k: int, axes, spatial_shape: Sequence[int]) -> np.ndarray:
    """The affine of ``rot90(array, k, axes)`` for an array of ``spatial_shape`` with ``affine``."""
    n = len(spatial_shape)
    perm, flips = _rot90_params(n, k, axes)
    return check_affine(affine) @ _permute_flip_matrix(spatial_shape, perm, flips)


# ----------------------------------------------------------------------------------------------- crop / pad
def normalize_slices(slices, spatial_shape: Sequence[int]) -> tuple[slice, ...]:
    """Make explicit ``slice(start, stop)`` per spatial axis (missing trailing axes: whole axis); step must be 1."""
    slices = tuple(slices)
    if len(slices) > len(spatial_shape):
        raise ValueError(f"{len(slices)} slices for {len(spatial_shape)} spatial dims")
    out = []
    for i, size in enumerate(spatial_shape):
        s = slices[i] if i < len(slices) else slice(None)
        start, stop, step = s.indices(int(size))
        if step != 1:
            raise ValueError(f"crop slices must have step 1; got {s} on axis {i}")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


def crop(array: np.ndarray, affine, slices, *, has_channels: bool = True):
    """Crop spatial axes by ``slices`` (basic slicing: a view; on an ``np.memmap`` only that region is read
    when the view is copied). Returns ``(array, affine)`` with the affine shifted to the crop's first voxel.

    ``slices`` index the leading axes, like numpy; with fewer slices than spatial dims (counted with
    ``has_channels``) the remaining spatial axes are kept whole.
    """
    slices = tuple(slices)
    n = len(slices) if len(slices) in (2, 3) else array.ndim - (1 if has_channels else 0)
    if n > array.ndim or n not in (2, 3):
        raise ValueError(f"crop needs 2 or 3 spatial slices for an array of shape {tuple(array.shape)}; got {slices}")
    slices = normalize_slices(slices, array.shape[:n])
    out = array[slices]
    return out, check_affine(affine) @ translation([s.start for s in slices])


def foreground_bbox(array: np.ndarray, threshold: float = 0.0, margin=0, *, has_channels: bool = False):
    """Bounding box of voxels ``> threshold`` (any channel when ``has_channels``), grown by ``margin`` voxels
    (int or one per spatial dim) and clamped to the array. Returns one ``slice`` per spatial dim; the whole
    array when nothing exceeds ``threshold``."""
    n = spatial_ndim(array, has_channels)
    mask = np.asarray(array) > threshold
    if has_channels:
        mask = mask.any(axis=-1)
    margin = broadcast(margin, n, "margin")
    out = []
    for ax in range(n):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(n) if a != ax)))
        size = mask.shape[ax]
        if hit.size == 0:
            return tuple(slice(0, s) for s in mask.shape)
        lo = max(0, int(hit[0]) - int(margin[ax]))
        hi = min(size, int(hit[-1]) + 1 + int(margin[ax]))
        out.append(slice(lo, hi))
    return tuple(out)


def crop_foreground(array: np.ndarray, affine, *, threshold: float = 0, margin=0, has_channels: bool = True):
    """Crop to :func:`foreground_bbox` (voxels ``> threshold``, plus ``margin`` voxels).

    Returns ``(array, affine, slices)`` where ``slices`` index the input's spatial axes.
    """
    slices = foreground_bbox(array, threshold, margin, has_channels=has_channels)
    out, new_affine = crop(array, affine, slices, has_channels=has_channels)
    return out, new_affine, slices


def pad_amounts(spatial_shape: Sequence[int], shape: Sequence[int]) -> list[tuple[int, int]]:
    """Symmetric ``(left, right)`` pads that bring ``spatial_shape`` to at least ``shape`` (extra voxel right)."""
    pads = []
    for size, want in zip(spatial_shape, shape):
        total = max(0, int(want) - int(size))
        pads.append((total // 2, total - total // 2))
    return pads


def pad_to(array: np.ndarray, affine, shape, *, mode: str = "constant", value=0, has_channels: bool = True):
    """Pad spatial axes symmetrically to at least ``shape`` (int, 1-tuple or one per spatial dim); axes already
    that large are kept. ``mode`` is an ``np.pad`` mode, ``value`` the constant for ``"constant"``.

    Returns ``(array, affine)``; the affine is shifted by the left pad so world positions are kept.
    """
    n = spatial_ndim(array, has_channels)
    shape = broadcast(shape, n, "shape")
    pads = pad_amounts(array.shape[:n], shape)
    new_affine = check_affine(affine) @ translation([-p[0] for p in pads])
    if not any(l or r for l, r in pads):
        return array, new_affine
    pads = pads + [(0, 0)] * (array.ndim - n)
    kwargs = {"constant_values": value} if mode == "constant" else {}
    return np.pad(array, pads, mode=mode, **kwargs), new_affine
