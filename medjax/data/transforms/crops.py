"""Random crop windows (index slices only; apply them with basic slicing so memmaps read just the window)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.data.transforms.spatial import broadcast_tuple

_REJECTION_TRIES = 64


def _check_crop(spatial_shape: Sequence[int], crop) -> tuple[int, ...]:
    crop = tuple(int(c) for c in broadcast_tuple(crop, len(spatial_shape), "crop"))
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


def centred_crop_slices(spatial_shape: Sequence[int], crop, centre: Sequence[int]) -> tuple[slice, ...]:
    """The ``crop`` window centred on voxel ``centre`` (start ``centre - crop // 2``), shifted to stay inside."""
    crop = _check_crop(spatial_shape, crop)
    out = []
    for size, c, x in zip(spatial_shape, crop, centre):
        start = min(max(int(x) - c // 2, 0), size - c)
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


def foreground_voxels(label: np.ndarray) -> np.ndarray:
    """``(K, n)`` int indices of voxels with ``label > 0`` (compute once per volume and reuse)."""
    return np.argwhere(np.asarray(label) > 0)


def balanced_crop_slices(
    label: np.ndarray,
    crop,
    rng: np.random.Generator,
    pos_fraction: float = 0.5,
    *,
    foreground: np.ndarray | None = None,
) -> tuple[slice, ...]:
    """A crop window centred on a foreground voxel with probability ``pos_fraction``, else on a background one.

    Args:
      label: ``(*S)`` integer labels (0 = background); may be an ``np.memmap``.
      crop: window size in voxels (1-tuple broadcasts).
      rng: the random generator (the result is deterministic given its state).
      pos_fraction: probability of centring on a voxel with ``label > 0``.
      foreground: optional precomputed :func:`foreground_voxels` of ``label``.

    Returns:
      One ``slice`` per spatial dim, clamped inside the volume. If the drawn class is absent (no foreground,
      or no background), the other class is used.
    """
    shape = label.shape
    crop = _check_crop(shape, crop)
    if foreground is None:
        foreground = foreground_voxels(label)
    want_fg = rng.random() < pos_fraction
    centre = None
    if want_fg and len(foreground):
        centre = foreground[int(rng.integers(0, len(foreground)))]
    elif not want_fg:
        centre = _random_background_voxel(label, rng)
    if centre is None:  # the drawn class is empty: use the other one
        if len(foreground):
            centre = foreground[int(rng.integers(0, len(foreground)))]
        else:
            centre = tuple(int(rng.integers(0, s)) for s in shape)
    return centred_crop_slices(shape, crop, centre)
