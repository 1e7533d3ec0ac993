"""Random crop windows (index slices only; apply them with basic slicing so memmaps read just the window)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.config.dims import broadcast

_REJECTION_TRIES = 64


def _check_crop(spatial_shape: Sequence[int], crop) -> tuple[int, ...]:
    crop = tuple(int(c) for c in broadcast(crop, len(spatial_shape), "crop"))
    for ax, (size, c) in enumerate(zip(spatial_shape, crop)):
        if c < 1 or c > size:
            raise ValueError(
                f"crop {crop} does not fit spatial shape {tuple(spatial_shape)} on axis {ax}; "
                "pad the volume first (pad_to) or use a smaller crop"
            )
    return crop


def random_crop_slices(spatial_shape: Sequence[int], crop, rng: np.random.Generator) -> tuple[slice, ...]:
    """A crop window of size ``crop`` (voxels; 1-tuple broadcasts) placed uniformly inside ``spatial_shape``."""
    crop = _check_crop(spatial_shape, crop)
    starts = [int(rng.integers(0, size - c + 1)) for size, c in zip(spatial_shape, crop)]
    return tuple(slice(s, s + c) for s, c in zip(starts, crop))


FOREGROUND_POSITIONS = ("centre", "anywhere")


def centred_crop_slices(spatial_shape: Sequence[int], crop, centre: Sequence[int],
                        offset: Sequence[int] | None = None) -> tuple[slice, ...]:
    """The ``crop`` window holding voxel ``centre`` at position ``offset`` inside it (default ``crop // 2``: centred;
    start ``centre - offset``), shifted to stay inside the volume."""
    crop = _check_crop(spatial_shape, crop)
    offset = [c // 2 for c in crop] if offset is None else offset
    out = []
    for size, c, x, o in zip(spatial_shape, crop, centre, offset):
        start = min(max(int(x) - int(o), 0), size - c)
        out.append(slice(start, start + c))
    return tuple(out)


def _random_background_voxel(label: np.ndarray, rng: np.random.Generator):
    """A uniformly random voxel with ``label == 0``: rejection sampling (cheap on memmaps), exact fallback."""
    shape = label.shape
    for _ in range(_REJECTION_TRIES):
        idx = tuple(int(rng.integers(0, s)) for s in shape)
        if label[idx] == 0:
            return idx
    flat = np.flatnonzero(np.asarray(label) == 0)
    if flat.size == 0:
        return None
    return np.unravel_index(int(flat[rng.integers(0, flat.size)]), shape)


def foreground_voxels(label: np.ndarray, *, flat: bool = False) -> np.ndarray:
    """Voxels with ``label > 0`` in C order (compute once per volume and reuse).

    Returns ``(K, n)`` int32 indices, or with ``flat`` the ``(K,)`` C-order flat indices (one cheap pass,
    no ``(K, n)`` array). Entry ``i`` names the same voxel in both forms, so a draw gives the same crop.
    """
    mask = np.asarray(label) > 0
    if flat:
        return np.flatnonzero(mask)
    dtype = np.int32 if max(mask.shape, default=0) < 2**31 else np.int64
    return np.argwhere(mask).astype(dtype, copy=False)


def _foreground_voxel(foreground: np.ndarray, i: int, shape) -> tuple[int, ...]:
    """Entry ``i`` of a ``(K, n)`` or flat ``(K,)`` foreground list as a voxel index."""
    if foreground.ndim == 1:
        return tuple(int(v) for v in np.unravel_index(int(foreground[i]), shape))
    return tuple(int(v) for v in foreground[i])


def balanced_crop_slices(
    label: np.ndarray,
    crop,
    rng: np.random.Generator,
    pos_fraction: float = 0.5,
    *,
    foreground: np.ndarray | None = None,
    foreground_position: str = "centre",
) -> tuple[slice, ...]:
    """A crop window on a foreground voxel with probability ``pos_fraction``, else centred on a background one.

    Args:
      label: ``(*S)`` integer labels (0 = background); may be an ``np.memmap``.
      crop: window size in voxels (1-tuple broadcasts).
      rng: the random generator (the result is deterministic given its state).
      pos_fraction: probability of centring on a voxel with ``label > 0``.
      foreground: optional precomputed :func:`foreground_voxels` of ``label``: ``(K, n)`` indices (may be an
        ``np.memmap``: only the drawn row is read) or ``(K,)`` flat C-order indices.
      foreground_position: where the drawn foreground voxel sits in the crop: ``"centre"`` (segmentation's
        usual choice; an object is then always mid-crop) or ``"anywhere"`` (uniform over the crop, one extra
        draw per axis: a window classifier sees objects at every position, as the sliding windows it is scored
        on hold them). ``"centre"`` draws exactly as before this option existed.

    Returns:
      One ``slice`` per spatial dim, clamped inside the volume. If the drawn class is absent (no foreground,
      or no background), the other class is used.
    """
    if foreground_position not in FOREGROUND_POSITIONS:
        raise ValueError(f"foreground_position={foreground_position!r}: use one of {FOREGROUND_POSITIONS}")
    shape = label.shape
    crop = _check_crop(shape, crop)
    if foreground is None:
        foreground = foreground_voxels(label, flat=True)
    want_fg = rng.random() < pos_fraction
    centre = None
    on_fg = False
    if want_fg and len(foreground):
        centre, on_fg = _foreground_voxel(foreground, int(rng.integers(0, len(foreground))), shape), True
    elif not want_fg:
        centre = _random_background_voxel(label, rng)
    if centre is None:  # the drawn class is empty: use the other one
        if len(foreground):
            centre, on_fg = _foreground_voxel(foreground, int(rng.integers(0, len(foreground))), shape), True
        else:
            centre = tuple(int(rng.integers(0, s)) for s in shape)
    offset = None
    if on_fg and foreground_position == "anywhere":
        offset = [int(rng.integers(0, c)) for c in crop]
    return centred_crop_slices(shape, crop, centre, offset)
