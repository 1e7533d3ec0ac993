"""2D slices of 3D volumes that still know where they sit in the world."""

from __future__ import annotations

import numpy as np

from medjax.data.transforms.spatial import check_affine, spatial_ndim


def slice_affine(affine, index: int, axis: int = 2) -> np.ndarray:
    """``(4, 4)`` affine of slice ``index`` along volume ``axis``: columns 0, 1 are the two remaining volume axes
    (in order), column 2 the slice axis, and the translation is the world position of the slice's voxel (0, 0)."""
    affine = check_affine(affine)
    rest = [a for a in range(3) if a != axis]
    out = np.eye(4)
    out[:3, 0] = affine[:3, rest[0]]
    out[:3, 1] = affine[:3, rest[1]]
    out[:3, 2] = affine[:3, axis]
    out[:3, 3] = affine[:3, 3] + affine[:3, axis] * index
    return out


def slice_from_volume(array: np.ndarray, affine, index: int, axis: int = 2, *, has_channels: bool = True):
    """Take slice ``index`` along spatial ``axis`` of a volume.

    Args:
      array: ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
      affine: ``(4, 4)`` voxel->world (RAS+, mm) of the volume.
      index: slice index along ``axis`` (``0 <= index < size``; negative counts from the end).
      axis: spatial axis 0, 1 or 2 (2: axial slices of a RAS volume).

    Returns:
      ``(array2d, affine2d)``: ``(H, W[, C])`` (the two remaining axes in order; a view) and the slice's
      ``(4, 4)`` affine (:func:`slice_affine`): ``affine2d @ (i, j, 0, 1)`` is the world position of the voxel.
    """
    if spatial_ndim(array, has_channels) != 3:
        raise ValueError(f"slice_from_volume needs a 3D volume; got shape {tuple(array.shape)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2; got {axis}")
    size = array.shape[axis]
    if not -size <= index < size:
        raise IndexError(f"slice index {index} out of range for axis {axis} of size {size}")
    index = int(index) % size
    view = array[(slice(None),) * axis + (index,)]  # basic indexing: a view (memmaps read only the slice)
    return view, slice_affine(affine, index, axis)
